"""How much compute stopping diverged runs early saved, from finished runs' summaries.

A run that diverges stops at the logged step where the divergence detector fires
(train.stop_on_divergence, on by default) instead of training to train.steps. For every
results/runs/<id>/summary.json this reads steps_planned, steps_completed and
flops_per_token (and train.batch_size x train.seq_len from the run's config.yaml) and sums

    planned FLOPs  = flops_per_token x tokens_per_step x steps_planned
    trained FLOPs  = flops_per_token x tokens_per_step x steps_completed
    saved          = planned - trained   (and saved / planned)

plus an estimate of the wall time saved (each stopped run's own seconds per step times the
steps it skipped).

    python benchmarks/early_stopping.py                      # results/runs
    python benchmarks/early_stopping.py results/smoke        # another results directory
    python benchmarks/early_stopping.py --study attn_logit_growth   # one study's runs only

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from _report import emit

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def tokens_per_step(run_dir: Path) -> int | None:
    try:
        cfg = yaml.load((run_dir / "config.yaml").read_text(), Loader=_LOADER) or {}
        return int(cfg["train"]["batch_size"]) * int(cfg["train"]["seq_len"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def study_run_ids(results: Path, study: str) -> set[str]:
    path = results / "studies" / study / "runs.parquet"
    if not path.is_file():
        raise SystemExit(f"--study: {path} not found (run the aggregate rule for {study!r} first)")
    import polars as pl
    return set(pl.read_parquet(path, columns=["run_id"])["run_id"].to_list())


def collect(results: Path, only: set[str] | None = None) -> list[dict]:
    rows = []
    for summary in sorted((results / "runs").glob("*/summary.json")):
        run_dir = summary.parent
        if only is not None and run_dir.name not in only:
            continue
        s = json.loads(summary.read_text())
        tps = tokens_per_step(run_dir)
        need = ("steps_planned", "steps_completed", "flops_per_token")
        if tps is None or any(s.get(k) is None for k in need):
            print(f"warning: {run_dir.name}: missing {'config.yaml' if tps is None else 'summary fields'}; skipped",
                  file=sys.stderr)
            continue
        planned, done = int(s["steps_planned"]), int(s["steps_completed"])
        fpt = int(s["flops_per_token"])
        wall = s.get("wall_time_s")
        sec_per_step = wall / done if wall and done else None
        rows.append({
            "run_id": s.get("run_id", run_dir.name), "diverged": bool(s.get("diverged")),
            "stopped_early": done < planned, "steps_planned": planned, "steps_completed": done,
            "planned_flops": fpt * tps * planned, "trained_flops": fpt * tps * done,
            "wall_s": wall, "wall_saved_s": sec_per_step * (planned - done) if sec_per_step else 0.0,
        })
    return rows


def summarise(rows: list[dict]) -> dict:
    def block(rs):
        planned = sum(r["planned_flops"] for r in rs)
        trained = sum(r["trained_flops"] for r in rs)
        wall = sum(r["wall_s"] or 0.0 for r in rs)
        saved_wall = sum(r["wall_saved_s"] for r in rs)
        return {
            "runs": len(rs),
            "steps_planned": sum(r["steps_planned"] for r in rs),
            "steps_completed": sum(r["steps_completed"] for r in rs),
            "planned_flops": planned, "trained_flops": trained, "flops_saved": planned - trained,
            "flops_saved_fraction": (planned - trained) / planned if planned else 0.0,
            "wall_s": wall, "wall_saved_s_estimate": saved_wall,
            "wall_saved_fraction_estimate": saved_wall / (wall + saved_wall) if wall + saved_wall else 0.0,
        }
    return {
        "all": block(rows),
        "diverged": block([r for r in rows if r["diverged"]]),
        "stopped_early": block([r for r in rows if r["stopped_early"]]),
        "not_diverged": block([r for r in rows if not r["diverged"]]),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", type=Path, default=Path("results"), help="results directory (default %(default)s)")
    p.add_argument("--study", default=None, help="only the runs of this study (needs results/studies/<study>/runs.parquet)")
    p.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
    args = p.parse_args(argv)
    if not (args.results / "runs").is_dir():
        raise SystemExit(f"{args.results / 'runs'}: no such directory")
    only = study_run_ids(args.results, args.study) if args.study else None
    rows = collect(args.results, only)
    out = {"results": str(args.results), "study": args.study, **summarise(rows)}
    print(f"{'':14s} {'runs':>5s} {'steps planned':>14s} {'completed':>10s} {'TFLOP planned':>14s} "
          f"{'TFLOP saved':>12s} {'saved':>7s} {'wall h':>7s} {'wall h saved~':>13s}")
    for name in ("all", "diverged", "stopped_early", "not_diverged"):
        b = out[name]
        print(f"{name:14s} {b['runs']:5d} {b['steps_planned']:14d} {b['steps_completed']:10d} "
              f"{b['planned_flops'] / 1e12:14.2f} {b['flops_saved'] / 1e12:12.2f} {b['flops_saved_fraction']:7.1%} "
              f"{b['wall_s'] / 3600:7.2f} {b['wall_saved_s_estimate'] / 3600:13.2f}")
    a, dv = out["all"], out["diverged"]
    print("\nrow for the table in docs/performance.md (runs | diverged | steps planned | steps completed | "
          "TFLOP planned | TFLOP saved | saved | wall h | wall h saved (est.)):")
    print(f"| {a['runs']:,} | {dv['runs']:,} | {a['steps_planned']:,} | {a['steps_completed']:,} | "
          f"{a['planned_flops'] / 1e12:.2f} | {a['flops_saved'] / 1e12:.2f} | {a['flops_saved_fraction']:.1%} | "
          f"{a['wall_s'] / 3600:.2f} | {a['wall_saved_s_estimate'] / 3600:.2f} |")
    return emit(out, args.json)


if __name__ == "__main__":
    main()
