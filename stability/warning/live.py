"""`train.early_warning`: the predictor read while a run trains (issue 16, part 3).

    off     (default) nothing is computed and nothing is written: the run's files are
            exactly those of a run without this module.
    report  at the first logged step >= K x train.steps (K: the shipped model's window
            fraction, 10%), p_fail is computed from the run's metrics rows so far, exactly
            as `features.features` reads a finished run's first K, and the predicted mode
            (the failure-mode rule on the rows so far, when p_fail >= the threshold, else
            `none`). Every logged row from then on carries both (`warning_p_fail`,
            `warning_mode`; null before), and summary.json the decision (SUMMARY_KEYS).
    stop    as report, and a run with p_fail >= train.early_warning_threshold ends at that
            step: `stopped_by_warning: true` (not `diverged`), which the analysis counts as
            failed (sensitivity.with_outcome).

The decision is made once, at K: the model was fit on K-windows, so an earlier, shorter
window would be outside what it was fit on, and a later one adds nothing it reads. It is
a pure function of the logged rows, so a run resumed from a checkpoint decides the same.
A run whose first K holds no logged update (train.steps x K < train.log_every) gets
p_fail null and is never stopped; a run the divergence detector stops before K has no
decision. train.py calls `Warner.step` once per logged step.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import polars as pl

from . import features as F
from . import model as M

COLUMNS = ("warning_p_fail", "warning_mode")
SUMMARY_KEYS = ("warning_p_fail", "warning_mode", "warning_step", "warning_threshold", "warning_model",
                "stopped_by_warning")
MODES = ("off", "report", "stop")
DEFAULT_THRESHOLD = 0.5


def model_fingerprint(path: str | Path | None = None) -> str:
    """sha256 (12 hex digits) of the model file the runs read (default: the shipped one)."""
    return hashlib.sha256(Path(path or M.DEFAULT_MODEL).read_bytes()).hexdigest()[:12]


class Warner:
    """The early warning of one run (`cfg.train.early_warning`); inert when `off`."""

    def __init__(self, cfg, rows: list[dict] = ()) -> None:
        t = cfg.train
        self.mode = getattr(t, "early_warning", "off")
        self.threshold = float(getattr(t, "early_warning_threshold", DEFAULT_THRESHOLD))
        self.steps, self.eps = int(t.steps), float(cfg.optim.eps)
        self.model_path = getattr(t, "early_warning_model", "") or None
        self.model = M.load(self.model_path) if self.mode != "off" else None
        self.k = float(self.model["k"]) if self.model else 0.0
        self.decided_at: int | None = None
        self.p_fail: float | None = None
        self.predicted: str | None = None
        self.stopped = False
        self._restore(rows)

    def step(self, rows: list[dict]) -> bool:
        """After each logged step (rows[-1] its row, rows[0] step 0's): decide at K, annotate
        rows[-1] with COLUMNS (when on) and return whether the run must stop now."""
        if self.mode == "off":
            return False
        step = int(rows[-1]["step"])
        if self.decided_at is None and step >= self.k * self.steps:
            self._decide(rows, step)
        rows[-1]["warning_p_fail"] = self.p_fail
        rows[-1]["warning_mode"] = self.predicted
        self.stopped = (self.mode == "stop" and self.decided_at == step and self.p_fail is not None
                        and self.p_fail >= self.threshold)
        return self.stopped

    def _restore(self, rows: list[dict]) -> None:
        """A run resumed from a checkpoint taken after the decision keeps it (`rows`: those it
        resumes with): the first row annotated with a mode is where it was made."""
        for r in rows:
            if r.get("warning_mode") is not None:
                self.decided_at, self.p_fail, self.predicted = int(r["step"]), r["warning_p_fail"], r["warning_mode"]
                return

    def _decide(self, rows: list[dict], step: int) -> None:
        m = pl.DataFrame([{k: v for k, v in r.items() if k not in COLUMNS} for r in rows],
                         infer_schema_length=None)
        self.decided_at = step
        if not F.has_window(m, self.k, self.steps):
            return
        self.p_fail = float(M.predict(self.model, [F.features(m, self.k, self.steps, self.eps)])[0])
        self.predicted = F.signature(m, self.eps)[0] if self.p_fail >= self.threshold else "none"

    def summary(self) -> dict[str, Any]:
        """SUMMARY_KEYS for summary.json ({} when off)."""
        if self.mode == "off":
            return {}
        return {"warning_p_fail": self.p_fail, "warning_mode": self.predicted, "warning_step": self.decided_at,
                "warning_threshold": self.threshold, "warning_model": model_fingerprint(self.model_path),
                "stopped_by_warning": self.stopped}
