"""`train.early_warning: stop` for real on a slice of the default study, against the simulation.

    python benchmarks/early_warning_live.py [--study attn_logit_growth] [--results results] [--out DIR]
        [--json benchmarks/results/early_warning_live.json]

benchmarks/early_warning.py simulates `stop` on finished runs: p_fail from each run's first K of
logged rows, a stop at its decision step. This trains the study's runs again with
`train.early_warning: stop` at threshold 0 (so every run stops at its decision step and trains
only its first K) and compares each live decision with the shipped model's p_fail on the same
run's finished metrics: the same number if the simulation is what `stop` does. Then, with the
run's label from the finished study, the stop outcome at the default threshold (0.5) and at the
shipped model's `stop_threshold`, in-sample for the shipped model.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import emit, machine  # noqa: E402

from stability.analysis.sensitivity import scored  # noqa: E402
from stability.config import flatten, load  # noqa: E402
from stability.grid import expand, load_workflow  # noqa: E402
from stability.train import train  # noqa: E402
from stability.warning import features as F  # noqa: E402
from stability.warning import model as M  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflow", default="config/config.yaml")
    ap.add_argument("--study", default="attn_logit_growth")
    ap.add_argument("--results", default="results", help="the finished default study")
    ap.add_argument("--out", type=Path, default=Path("results/early_warning_live"), help="where the stopped runs go")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    print(machine("start"), file=sys.stderr)
    study = expand(load_workflow([args.workflow]))[args.study]
    labels = scored(pl.read_parquet(Path(args.results) / "studies" / args.study / "runs.parquet"))
    failed = dict(zip(labels["run_id"], labels["failed"]))
    shipped = M.load()
    rows, t0 = [], time.perf_counter()
    for p in study.points:
        flat = flatten(p.config.to_dict())
        flat.update({"train.early_warning": "stop", "train.early_warning_threshold": 0.0,
                     "data.cache_dir": str(Path(args.results) / "data"), "train.threads": 1})
        cfg = load(overrides=flat)
        s = train(cfg, args.out / p.run_id, quiet=True)
        done = pl.read_parquet(Path(args.results) / "runs" / p.run_id / "metrics.parquet").sort("step")
        steps, k = cfg.train.steps, shipped["k"]
        offline = (float(M.predict(shipped, [F.features(done, k, steps, cfg.optim.eps)])[0])
                   if F.has_window(done, k, steps) else None)
        rows.append({"run_id": p.run_id, "scale": p.scale, "variant": p.variant, "lr": p.lr, "seed": p.seed,
                     "failed": failed.get(p.run_id), "live_p_fail": s["warning_p_fail"], "offline_p_fail": offline,
                     "warning_step": s["warning_step"], "steps_completed": s["steps_completed"], "steps": steps})
    d = pl.DataFrame(rows)
    both = d.filter(pl.col("live_p_fail").is_not_null() & pl.col("offline_p_fail").is_not_null())
    out = {"study": args.study, "runs": d.height, "compared": both.height,
           "decided_live_only": d.filter(pl.col("live_p_fail").is_not_null() & pl.col("offline_p_fail").is_null()).height,
           "max_abs_p_fail_difference": float((both["live_p_fail"] - both["offline_p_fail"]).abs().max())
           if both.height else None,
           "wall_s": time.perf_counter() - t0}
    for name, t in (("threshold_0.5", M.THRESHOLD), ("stop_threshold", shipped.get("stop_threshold"))):
        if t is None:
            continue
        flagged = d.with_columns(stop=pl.col("live_p_fail").fill_null(-1.0) >= t)
        out[name] = {"threshold": t,
                     "failed_stopped": flagged.filter(pl.col("failed") & pl.col("stop")).height,
                     "failed": flagged.filter(pl.col("failed")).height,
                     "trained_stopped": flagged.filter(~pl.col("failed") & pl.col("stop")).height,
                     "trained": flagged.filter(~pl.col("failed")).height}
    out["machine"] = machine("end")
    emit(out, args.json, {**out, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
