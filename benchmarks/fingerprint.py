"""What identifying a corpus by its content costs (stability/corpus.py).

A local corpus's data id and every run id that uses it include a BLAKE2b digest of its
bytes. This times, for one file of --mb MiB (and a folder of --files files of the same total
size), with CPU seconds of this process (the machine may be shared) and wall seconds:

    first        hash every byte, write the on-disk cache (<cache>/fingerprints/*.json)
    same process the in-process memo: one stat per file
    new process  the on-disk cache: stat + a small JSON read (the memo is cleared)
    after touch  mtime changed, bytes not: hashed again, same digest
    planning     a 1,000-point grid over the folder (stability.grid.expand) in a new process
                 after an earlier planning, against the same grid on synthetic data

    python benchmarks/fingerprint.py [--mb 100] [--files 1000]

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stability import corpus  # noqa: E402
from stability.grid import expand  # noqa: E402


def timed(fn, repeat: int = 1) -> tuple[float, float, object]:
    """(CPU seconds, wall seconds) per call, the median of `repeat` calls, and the result."""
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return sorted(cpu)[len(cpu) // 2], sorted(wall)[len(wall) // 2], out


def measure(path: Path, suffixes, cache: Path) -> dict:
    fp = lambda: corpus.fingerprint(path, suffixes, cache)  # noqa: E731
    first_cpu, first_wall, digest = timed(fp)
    same_cpu, same_wall, d2 = timed(fp, repeat=21)
    corpus._memo.clear()
    new_cpu, new_wall, d3 = timed(lambda: (corpus._memo.clear(), fp())[1], repeat=21)
    assert digest == d2 == d3
    for f in ([path] if path.is_file() else list(path.rglob("*.txt"))):
        os.utime(f)
    touch_cpu, touch_wall, d4 = timed(fp)
    assert d4 == digest
    return {"first_cpu_s": first_cpu, "first_wall_s": first_wall, "same_process_cpu_s": same_cpu,
            "same_process_wall_s": same_wall, "new_process_cpu_s": new_cpu, "new_process_wall_s": new_wall,
            "after_touch_cpu_s": touch_cpu, "after_touch_wall_s": touch_wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100, help="corpus size in MiB")
    ap.add_argument("--files", type=int, default=1000, help="files in the folder case")
    args = ap.parse_args()
    size = args.mb << 20
    rng_block = os.urandom(1 << 20)
    out: dict = {"mb": args.mb, "files": args.files}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        book = tmp / "book.txt"
        with open(book, "wb") as fh:
            for i in range(args.mb):
                fh.write(rng_block[i:] + rng_block[:i])
        folder = tmp / "books"
        folder.mkdir()
        per_file = size // args.files
        for i in range(args.files):
            (folder / f"{i:05d}.txt").write_bytes(rng_block[:per_file])
        time.sleep(corpus.RACY_S + 0.1)  # files this old are cached (ctime cannot be backdated)
        out["file"] = measure(book, (), tmp / "cache")
        out["folder"] = measure(folder, corpus.TEXT_SUFFIXES, tmp / "cache")
        corpus._memo.clear()
        time.sleep(corpus.RACY_S + 0.1)  # measure() touched the files: let them age into the cache again
        corpus.fingerprint(folder, corpus.TEXT_SUFFIXES, tmp / "cache")  # a previous planning cached them
        corpus._memo.clear()  # a new process
        wf = {"scales": {"s0": {"d_model": 16, "n_layers": 1, "head_dim": 8}},
              "defaults": {"data.source": "text", "data.path": str(folder), "data.cache_dir": str(tmp / "cache")},
              "studies": {"x": {"scales": ["s0"], "lrs": [1e-4 * (i + 1) for i in range(100)], "seeds": list(range(10))}}}
        cpu, wall, studies = timed(lambda: expand(wf))
        out["planning_1000_points_folder"] = {"cpu_s": cpu, "wall_s": wall, "runs": len(studies["x"].run_ids)}
        wf["defaults"] = {}  # the same grid on synthetic data: no files to fingerprint
        cpu, wall, studies = timed(lambda: expand(wf))
        out["planning_1000_points_synthetic"] = {"cpu_s": cpu, "wall_s": wall, "runs": len(studies["x"].run_ids)}
    for name in ("file", "folder"):
        r = out[name]
        print(f"{name:6s} first {r['first_cpu_s']:.3f} s CPU ({args.mb / max(r['first_wall_s'], 1e-9):.0f} MiB/s wall), "
              f"same process {r['same_process_cpu_s'] * 1e3:.2f} ms, new process {r['new_process_cpu_s'] * 1e3:.2f} ms, "
              f"after touch {r['after_touch_cpu_s']:.3f} s")
    p = out["planning_1000_points_folder"]
    print(f"planning 1,000 run ids over the {args.files}-file folder (cached): {p['cpu_s']:.3f} s CPU; "
          f"on synthetic data: {out['planning_1000_points_synthetic']['cpu_s']:.3f} s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
