"""`stability diagnose RUN_DIR`: a run's failure mode with the evidence that decided it, and p_fail.

Whether the run failed: the analysis's label (`sensitivity.scored`) when the run sits in a
results folder (RUN_DIR = <results>/runs/<run_id>) whose study tables hold it; otherwise,
from the run alone, `with_outcome` on its summary: failed when it diverged, was stopped by
the warning, or has no finite final loss. A lone run that did none of these is `not_judged`
(failed None), not `trained`: the analysis's third failure, a stall (a final loss too close
to the initial one), is judged against the best run of its LR grid, which a lone run lacks.
A run without summary.json (still training) is `running`. p_fail is the predictor's
probability at its window fraction K; the threshold is the run's own
`train.early_warning_threshold` when it trained with the warning on (summary.json), else the
model's. A run that failed or whose p_fail reaches the threshold (`at_risk`) is given a
failure mode by the rule of `features` (from every logged step: the first mechanism that
counts, i.e. fired, and for log Z drift and epsilon before the loss left its initial value),
else `none`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl

from ..analysis.aggregate import read_config, read_summary
from ..analysis.sensitivity import scored, with_outcome
from ..config import ConfigError
from . import features as F
from . import model as M


def _label_from_study(run_dir: Path, run_id: str) -> bool | None:
    results = run_dir.parent.parent if run_dir.parent.name == "runs" else None
    if results is None:
        return None
    for t in sorted(results.glob("studies/*/runs.parquet")):
        df = pl.read_parquet(t)
        if "run_id" in df.columns and (df["run_id"] == run_id).any():
            row = scored(df).filter(pl.col("run_id") == run_id)
            if row.height:
                return bool(row["failed"][0])
    return None


def _label_alone(summary: dict[str, Any]) -> bool | None:
    if not summary:
        return None
    if summary.get("stopped_by_warning"):
        return True
    row = pl.DataFrame([{"final_loss": summary.get("final_loss"), "init_loss": summary.get("init_loss"),
                         "diverged": bool(summary.get("diverged"))}],
                       schema={"final_loss": pl.Float64, "init_loss": pl.Float64, "diverged": pl.Boolean})
    failed = with_outcome(row)["failed"][0]
    return True if failed else None  # not diverged: a stall is judged only against its grid


def diagnose(run_dir: str | Path, model_path: str | Path | None = None) -> dict[str, Any]:
    """The diagnosis of one run folder as a JSON-ready dict.

    Keys: run_id, status (`failed` | `at_risk` (p_fail >= threshold, not labelled failed) |
    `trained` | `not_judged` (a lone run that did not diverge) | `running`), failed (bool, or
    None when not judged or running),
    label_source (`study table` | `run summary` | None), failure_mode (features.MODES),
    signature (the rule's mode whether or not the run failed), p_fail (float in [0, 1], or
    None when the run has not logged an update inside the model's window), k, threshold,
    evidence ({mode: features.mechanisms entry}), loss_excursion_step (features.loss_excursion:
    the first logged step from which the loss stayed above its step-0 value, or None),
    steps_logged, steps_planned.
    Raises ConfigError (one line naming the path) for a folder without metrics.parquet, and
    for an unreadable model file.
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.parquet"
    if not metrics_path.is_file():
        raise ConfigError(f"{run_dir}: no metrics.parquet; expected a run folder written by `stability train` "
                          "(config.yaml, metrics.parquet, summary.json)")
    m = pl.read_parquet(metrics_path).sort("step")
    summary = read_summary(run_dir / "summary.json")
    cfg = read_config(run_dir, summary)
    model = M.load(model_path or cfg.get("train.early_warning_model") or None)  # default: the model the run read
    eps = float(cfg.get("optim.eps", 1e-8))
    steps = int(summary.get("steps_planned") or cfg.get("train.steps") or (m["step"].max() or 1))
    run_id = str(summary.get("run_id") or run_dir.name)
    failed, source = _label_from_study(run_dir, run_id), "study table"
    if failed is None:
        failed, source = _label_alone(summary), ("run summary" if summary else None)
    k = float(model["k"])
    p = float(M.predict(model, [F.features(m, k, steps, eps)])[0]) if F.has_window(m, k, steps) else None
    mode, evidence = F.signature(m, eps)
    own = summary.get("warning_threshold")
    threshold = float(model["threshold"] if own is None else own)
    at_risk = p is not None and p >= threshold
    status = ("failed" if failed else "at_risk" if at_risk else "trained" if failed is False
              else "not_judged" if summary else "running")
    return {"run_id": run_id, "status": status, "failed": failed, "label_source": source,
            "failure_mode": mode if (failed or at_risk) else "none", "signature": mode,
            "p_fail": p, "k": k, "threshold": threshold, "evidence": evidence,
            "loss_excursion_step": F.loss_excursion(m), "steps_logged": int(m["step"].max()) if m.height else 0, "steps_planned": steps}


def _num(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def render(d: dict[str, Any]) -> str:
    """The human-readable diagnosis (several lines) of a `diagnose` dict."""
    p = "n/a (no logged update inside the window yet)" if d["p_fail"] is None else f"{d['p_fail']:.3f}"
    lines = [f"run {d['run_id']}: {d['status']} (steps logged {d['steps_logged']} of {d['steps_planned']}; "
             f"label from {d['label_source'] or 'nowhere: no summary yet'})"]
    if d["status"] == "not_judged":
        lines.append("  it did not diverge; whether it stalled (a final loss too close to its initial one) is judged "
                     "against its LR grid: run it in a study, then diagnose <results>/runs/<run_id>")
    elif d["status"] == "at_risk":
        lines.append("  not labelled failed, but p_fail reached the threshold: the run is predicted to fail")
    lines += [f"p_fail = {p} from the first {100 * d['k']:g}% of steps (threshold {d['threshold']:g})",
             f"failure mode: {d['failure_mode']}"
             + ("" if d["failure_mode"] != "none" or d["signature"] == "other"
                else f" (the signals alone would say {d['signature']})"),
             "loss left its initial value: " + ("never" if d["loss_excursion_step"] is None
                                                 else f"at step {d['loss_excursion_step']:g}"),
             "evidence (the first mode in this order that counts decides: attention when it fired, log Z "
             "and epsilon only when they fired before the loss left its initial value; none = other):"]
    for mode, e in d["evidence"].items():
        fired = f"fired at step {e['fired_at_step']:g}" if e["fired_at_step"] is not None else "did not fire"
        if e["fired_at_step"] is not None and not e["counts"]:
            fired += " (not before the loss excursion: a consequence, not counted)"
        mark = "  <- decides" if mode == d["signature"] and d["failure_mode"] != "none" else ""
        bound = "<=" if mode == "epsilon_collapse" else ">="
        lines.append(f"  {mode}: {e['signal']} {'lowest' if bound == '<=' else 'peak'} {_num(e['value'])} "
                     f"(fires at {bound} {e['threshold']:g}), {fired}{mark}")
    return "\n".join(lines)
