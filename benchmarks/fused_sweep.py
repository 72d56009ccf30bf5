"""Fused sweep against one run at a time (issue 17, part 3): combined tokens/s of 6 peak LRs x
2 seeds trained as one program (`stability.fused.train_fused`) against the same 12 runs
trained one after the other (`stability.train.train`, what one process per run does when
the runs share a device), both measured in this one run, at d=32, 64 and 256.

Each side is timed end to end (model build, step-0 row, steps, logging every 10 steps,
one evaluation, outputs), wall clock and CPU seconds of this process; the token cache is
built before timing. `ratio` is fused combined tokens/s over one-at-a-time combined tokens/s
(wall clock on CUDA; CPU seconds on CPU, where other jobs share the machine: see
docs/performance.md). stability.fusion.should_fuse reads this JSON.

    python benchmarks/fused_sweep.py [--device cpu|cuda] [--quick] [--d-model D] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
SEEDS = (0, 1)
SHAPES = ({"model.d_model": 32, "model.n_layers": 2, "model.head_dim": 16},
          {"model.d_model": 64, "model.n_layers": 2, "model.head_dim": 32},
          {"model.d_model": 256, "model.n_layers": 2, "model.head_dim": 64})


def configs(shape: dict, device: str, steps: int, batch: int, seq_len: int, cache: Path):
    from stability.config import load
    common = {**shape, "train.steps": steps, "train.batch_size": batch, "train.seq_len": seq_len,
              "train.log_every": 10, "train.eval_every": steps, "train.eval_batches": 1,
              "train.checkpoint_every": 10 * steps, "train.device": device, "train.threads": 1 if device == "cpu" else 0,
              "optim.warmup_steps": max(steps // 10, 1), "data.n_train_tokens": 200_000, "data.n_val_tokens": 8_000,
              "data.cache_dir": str(cache)}
    return [load(overrides={**common, "optim.lr": lr, "seed": s}) for lr in LRS for s in SEEDS]


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    if _cuda():
        import torch
        torch.cuda.synchronize()
    return out, time.perf_counter() - w, time.process_time() - c


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def case(shape: dict, device: str, steps: int, batch: int, seq_len: int, work: Path) -> dict:
    from stability import data as data_mod
    from stability.fused import train_fused
    from stability.train import train
    cfgs = configs(shape, device, steps, batch, seq_len, work / "data")
    data_mod.load(cfgs[0])  # the token cache, outside the timings
    tokens = len(cfgs) * steps * batch * seq_len
    _, wall_f, cpu_f = timed(lambda: train_fused(cfgs, [work / "fused" / c.run_id() for c in cfgs], quiet=True))
    _, wall_s, cpu_s = timed(lambda: [train(c, work / "alone" / c.run_id(), quiet=True) for c in cfgs])
    shutil.rmtree(work / "fused"), shutil.rmtree(work / "alone")
    clock_f, clock_s = (wall_f, wall_s) if device == "cuda" else (cpu_f, cpu_s)
    from stability.sizes import non_embedding_params
    return {"d_model": shape["model.d_model"], "n_layers": shape["model.n_layers"], "head_dim": shape["model.head_dim"],
            "non_embedding_params": non_embedding_params(cfgs[0].model), "members": len(cfgs), "steps": steps,
            "batch_size": batch, "seq_len": seq_len,
            "fused_tokens_per_s": tokens / clock_f, "one_at_a_time_tokens_per_s": tokens / clock_s,
            "ratio": clock_s / clock_f, "ratio_wall": wall_s / wall_f, "ratio_cpu": cpu_s / cpu_f,
            "fused_wall_s": wall_f, "one_at_a_time_wall_s": wall_s, "fused_cpu_s": cpu_f, "one_at_a_time_cpu_s": cpu_s,
            "clock": "wall" if device == "cuda" else "process CPU"}


def machine(device: str) -> dict:
    import torch
    info = {"device": device, "device_kind": "cpu" if device == "cpu" else torch.cuda.get_device_name(0),
            "torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "platform": platform.platform(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    try:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu_model"] = platform.processor()
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--quick", action="store_true", help="d=32 and 64 only, 10 steps: a plumbing check")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--d-model", type=int, action="append", choices=[s["model.d_model"] for s in SHAPES],
                   help="measure only this width (repeatable; default: all)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    steps = args.steps or (10 if args.quick else (100 if device == "cuda" else 20))
    batch, seq_len = (16, 128) if device == "cuda" else (8, 64)
    shapes = SHAPES[:2] if args.quick else SHAPES
    if args.d_model:
        shapes = [s for s in SHAPES if s["model.d_model"] in args.d_model]
    cases = []
    with tempfile.TemporaryDirectory(prefix="fused-sweep-") as tmp:
        for shape in shapes:
            c = case(shape, device, steps, batch, seq_len, Path(tmp))
            cases.append(c)
            if args.json:  # after every case: a run stopped early keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({"what": "partial", "machine": machine(device), "cases": cases},
                                                indent=2) + "\n")
            print(f"d={c['d_model']:4d} L={c['n_layers']} {c['members']} members x {c['steps']} steps: fused "
                  f"{c['fused_tokens_per_s']:10.0f} tok/s, one at a time {c['one_at_a_time_tokens_per_s']:10.0f} "
                  f"tok/s, ratio {c['ratio']:.2f} ({c['clock']}; wall {c['ratio_wall']:.2f})", flush=True)
    from stability.fusion import should_fuse
    result = {"what": "benchmarks/fused_sweep.py: combined tokens/s of a fused 6 LR x 2 seed sweep over one run "
                      "at a time", "machine": machine(device), "cases": cases}
    result["should_fuse"] = should_fuse(result["machine"]["device_kind"], result)
    print(f"machine: {result['machine']['device_kind']} ({result['machine'].get('cpu_model')}); "
          f"should_fuse -> {result['should_fuse']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
