"""Tiny run configs, a study folder laid out as the rules lay it out, and other shared test helpers."""
from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from stability import data as data_mod
from stability.config import load

REPO = Path(__file__).resolve().parents[1]


# A model and dataset small enough to train a few hundred steps in seconds.
TINY = {
    "model.d_model": 32, "model.n_layers": 1, "model.head_dim": 16,
    "train.steps": 60, "train.batch_size": 8, "train.seq_len": 32, "train.log_every": 5,
    "train.eval_every": 30, "train.eval_batches": 2, "train.checkpoint_every": 20, "train.threads": 1,
    "optim.warmup_steps": 5, "data.n_train_tokens": 40_000, "data.n_val_tokens": 4_000,
}


def tiny(tmp_path, **over):
    """The TINY run config, its token cache under tmp_path, with `over` applied."""
    return load(overrides={**TINY, "data.cache_dir": str(tmp_path / "data"), **over})


def child_env() -> dict[str, str]:
    """The environment for a subprocess of the tests: this checkout's package and this
    interpreter's scripts first, and no SLURM job id leaking in from a CI allocation."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.pop("SLURM_JOB_ID", None)
    return env


# The analyse rule's outputs, named as rules/analyse.smk names them inside a study folder.
ANALYSIS_FILES = {"sensitivity": "sensitivity.parquet", "fits": "fits.parquet", "forecast": "forecast.json",
                  "forecast_table": "forecast.csv", "claims": "claims.json"}


def analyse_dir(study_dir: Path, study_info: dict[str, Any]) -> dict[str, Any]:
    """analyse_study on study_dir/runs.parquet, writing the outputs beside it."""
    from stability.analysis import analyse_study  # polars-heavy: only the tests that analyse pay for it
    d = Path(study_dir)
    return analyse_study(d / "runs.parquet", {k: d / name for k, name in ANALYSIS_FILES.items()}, study_info)


@contextmanager
def crash_at(step: int) -> Iterator[None]:
    """Within the block, training raises RuntimeError("simulated crash") when it asks for the
    batch of `step`, as a killed job would stop (after the checkpoints before that step)."""
    real = data_mod.train_batch

    def crashing(data, s, *a, **k):
        if s == step:
            raise RuntimeError("simulated crash")
        return real(data, s, *a, **k)

    data_mod.train_batch = crashing
    try:
        yield
    finally:
        data_mod.train_batch = real


RTOL = 1e-5  # a fused member against the same run trained alone (fp32, CPU)
TIMING = {"tokens_per_s", "wall_time_s", "threads"}


def max_rel_diff(a, b) -> dict[str, float]:
    """Per column of two metrics frames (polars), the largest relative difference, timing aside."""
    assert a.columns == b.columns and a.height == b.height
    worst = {}
    for col in a.columns:
        if col in TIMING:
            continue
        for x, y in zip(a[col].to_list(), b[col].to_list()):
            assert (x is None) == (y is None), col
            if x is None or (math.isnan(x) and math.isnan(y)) or x == y:
                worst.setdefault(col, 0.0)
                continue
            worst[col] = max(worst.get(col, 0.0), abs(x - y) / max(abs(y), 1e-30))
    return worst


def same_summary(f: dict, s: dict) -> None:
    """Two summaries agree: equal keys, floats within RTOL, everything else equal, timing aside."""
    assert f.keys() == s.keys()
    for k in f:
        if k in TIMING:
            continue
        if isinstance(s[k], float) and isinstance(f[k], float):
            assert f[k] == pytest.approx(s[k], rel=RTOL, nan_ok=True), k
        else:
            assert f[k] == s[k], k
