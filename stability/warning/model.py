"""The early-warning predictor: a logistic regression on standardised FEATURES, kept as JSON.

Fitting uses scikit-learn's LogisticRegression (L2, C = 1, balanced class weights: failures
are a few percent of runs). Nothing is tuned: C, the class weights and the decision
threshold (THRESHOLD = 0.5, the balanced model's natural cut) were fixed before any
held-out result was seen. The saved file holds every number prediction needs, so reading it
needs neither scikit-learn nor pickle:

    {"format": FORMAT, "k": 0.1, "features": [...], "mean": [...], "scale": [...],
     "coef": [...], "intercept": b, "threshold": 0.5, "stop_threshold": t, "trained_on": {...}}

`stop_threshold` (`stability warn-fit` adds it) is the threshold the fit recommends for
`train.early_warning: stop`, chosen by a rule on the fit's own runs (`stop_threshold`).

p_fail = sigmoid(b + sum_i coef_i * clip((x_i - mean_i) / scale_i, -CLIP, CLIP)); a missing
(NaN) feature takes its training mean, so it adds nothing.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl

from ..config import ConfigError
from ..io import read_json, write_json
from .features import FEATURES

FORMAT = "stability-early-warning/1"
THRESHOLD = 0.5
CLIP = 10.0  # standardised values beyond +-10 sd (infinite ratios of a blown-up run) are capped
C = 1.0
DEFAULT_MODEL = Path(__file__).with_name("model.json")


def _matrix(rows: pl.DataFrame | Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    if isinstance(rows, pl.DataFrame):
        return np.column_stack([rows[n].cast(pl.Float64).fill_null(float("nan")).to_numpy() for n in names]) \
            if rows.height else np.zeros((0, len(names)))
    return np.array([[float(r.get(n, math.nan)) for n in names] for r in rows], float).reshape(-1, len(names))


def _standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (x - mean) / scale
    z = np.where(np.isnan(z), 0.0, z)
    return np.clip(z, -CLIP, CLIP)


def fit(examples: pl.DataFrame, k: float, features: Sequence[str] = FEATURES) -> dict[str, Any]:
    """Fit on the rows of `examples` (examples.build's table) at window fraction k; the model dict.

    Raises ValueError when those rows hold no failed or no trained run (nothing to separate).
    """
    from sklearn.linear_model import LogisticRegression

    rows = examples.filter((pl.col("k") - k).abs() < 1e-9)
    y = rows["failed"].cast(pl.Boolean).to_numpy().astype(int) if rows.height else np.zeros(0, int)
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError(f"at K = {k:g} the examples hold {int(y.sum())} failed and {int(len(y) - y.sum())} "
                         "trained runs; fitting needs both")
    raw = _matrix(rows, features)
    finite = np.where(np.isfinite(raw), raw, np.nan)
    with np.errstate(all="ignore"):
        hi, lo = np.nanmax(finite, axis=0), np.nanmin(finite, axis=0)
        # an infinite feature (a non-finite loss) enters as its column's largest (smallest) finite value
        raw = np.where(np.isposinf(raw), hi, np.where(np.isneginf(raw), lo, raw))
        mean = np.nan_to_num(np.nanmean(raw, axis=0))
        sd = np.nanstd(raw, axis=0)
    scale = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=5000)
    clf.fit(_standardise(raw, mean, scale), y)
    return {"format": FORMAT, "k": float(k), "features": list(features), "mean": mean.tolist(),
            "scale": scale.tolist(), "coef": clf.coef_[0].tolist(), "intercept": float(clf.intercept_[0]),
            "threshold": THRESHOLD,
            "trained_on": {"runs": int(len(y)), "failed": int(y.sum()),
                           "results": sorted(set(rows["results"].to_list())) if "results" in rows.columns else [],
                           "datasets": sorted(set(rows["dataset"].to_list())) if "dataset" in rows.columns else []}}


MAX_FALSE_STOPS = 0.025  # half the 5% ceiling: a new, larger scale shifts p_fail further


def out_of_scale(examples: pl.DataFrame, k: float) -> pl.DataFrame:
    """The rows at window fraction k with `p_fail` from a model fit without the row's scale
    (leave-one-scale-out); a scale whose complement cannot be fit (one class) is left out."""
    rows = examples.filter((pl.col("k") - k).abs() < 1e-9)
    parts = []
    for scale in sorted(set(rows["scale"].to_list())):
        train, test = rows.filter(pl.col("scale") != scale), rows.filter(pl.col("scale") == scale)
        try:
            parts.append(test.with_columns(p_fail=pl.Series(predict(fit(train, k), test), dtype=pl.Float64)))
        except ValueError:
            continue
    return pl.concat(parts) if parts else rows.with_columns(p_fail=pl.lit(None, pl.Float64))


def stop_threshold(examples: pl.DataFrame, k: float, max_false_stops: float = MAX_FALSE_STOPS) -> float:
    """The p_fail threshold for `train.early_warning: stop` that a fit on `examples` recommends.

    The smallest threshold, not below THRESHOLD, at which at most `max_false_stops` of the
    runs that trained would be stopped, their p_fail read out of scale (`out_of_scale`: the
    same shift a new scale brings). A probability in [THRESHOLD, 1]; THRESHOLD when no run
    could be scored.
    """
    p = out_of_scale(examples, k).filter(~pl.col("failed").cast(pl.Boolean))["p_fail"].drop_nulls()
    p = np.sort(p.to_numpy())[::-1]
    allowed = int(math.floor(max_false_stops * len(p)))
    if len(p) == 0 or allowed >= len(p):
        return THRESHOLD
    return float(max(THRESHOLD, min(1.0, np.nextafter(p[allowed], 2.0))))  # flags only the `allowed` highest


def predict(model: Mapping[str, Any], rows: pl.DataFrame | Sequence[Mapping[str, float]]) -> np.ndarray:
    """p_fail in [0, 1] for each row (a features table or dicts of FEATURES), shape (n,)."""
    names = model["features"]
    x = _matrix(rows, names)
    z = _standardise(x, np.asarray(model["mean"], float), np.asarray(model["scale"], float))
    return 1.0 / (1.0 + np.exp(-(z @ np.asarray(model["coef"], float) + float(model["intercept"]))))


def save(model: Mapping[str, Any], path: str | Path) -> Path:
    """Write the model as JSON (atomically); the path."""
    return write_json(path, dict(model))


def load(path: str | Path | None = None) -> dict[str, Any]:
    """Read a model file (default: the one shipped with the package, DEFAULT_MODEL).

    Raises ConfigError (one line naming the path) for a missing file or one that is not a
    model of this FORMAT.
    """
    path = Path(path) if path is not None else DEFAULT_MODEL
    try:
        model = read_json(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such model file; expected the JSON that `stability warn-fit` writes") from None
    except ValueError as e:
        raise ConfigError(f"{path}: not JSON ({e}); expected the file `stability warn-fit` writes") from None
    if not isinstance(model, dict) or model.get("format") != FORMAT or \
            len(model.get("coef", [])) != len(model.get("features", [None])):
        raise ConfigError(f"{path}: not an early-warning model (format {FORMAT!r} with one coef per feature)")
    return model
