"""Scaling fits against model size, extrapolated to larger targets.

Every fit is a polynomial in log10 space, y' = polyval(coef, log10 N) with y' = log10 y,
solved by scipy's least squares; `coef` is highest power first (numpy.polyval order).

kinds
  attn_logit           per (variant, lr): max attention logit at the probe step vs N,
                       quadratic from 4 sizes, else linear (degree_with_dof; the paper's
                       forecast, finding 8); diverges if > threshold.
  grad_rms             per (variant, lr): final gradient RMS vs N, linear (a power law);
                       the crossing is where it falls to AdamW's epsilon (finding 10).
  lowest_diverging_lr  per variant: the lowest LR that diverged at each size, power law.
  best_loss            per variant: the best final loss over the LR grid, power law.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import scipy.linalg

from .sensitivity import col, scored

LOGIT_THRESHOLD = 1e4  # paper: every run whose max logit passed ~1e4 at step 2000 diverged
MAX_LOG10_PARAMS = 15.0  # crossings beyond 1e15 parameters are reported as none
FIT_COLUMNS = {
    "study": pl.String, "kind": pl.String, "variant": pl.String, "lr": pl.Float64, "x": pl.String,
    "y": pl.String, "n_points": pl.Int64, "n_sizes": pl.Int64, "degree": pl.Int64,
    "coef": pl.List(pl.Float64), "r2": pl.Float64, "target_name": pl.String, "target_params": pl.Float64,
    "predicted": pl.Float64, "threshold": pl.Float64, "predicted_exceeds": pl.Boolean,
    "predicted_crossing_params": pl.Float64, "note": pl.String,
}


@dataclass
class Fit:
    coef: np.ndarray  # highest power first, in log10-log10 space
    r2: float
    n_points: int
    n_sizes: int
    x_min: float  # log10 of the smallest fitted size

    @property
    def degree(self) -> int:
        return len(self.coef) - 1

    def log_predict(self, params: Any) -> np.ndarray:
        return np.polyval(self.coef, np.log10(np.asarray(params, float)))

    def predict(self, params: Any) -> np.ndarray:
        return 10 ** self.log_predict(params)


def polyfit(x: np.ndarray, y: np.ndarray, degree: int) -> tuple[np.ndarray, float]:
    """Least-squares polynomial (highest power first) and its R^2, via scipy.linalg.lstsq."""
    coef, *_ = scipy.linalg.lstsq(np.vander(x, degree + 1), y)
    resid = y - np.polyval(coef, x)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid ** 2)) / total if total > 0 else 1.0
    return coef, r2


def degree_with_dof(n_sizes: int, max_degree: int) -> int:
    """The highest degree <= max_degree that leaves a residual degree of freedom over n_sizes
    distinct sizes (n_sizes - 2): a line through 3 sizes, a quadratic from 4. < 1: no such fit."""
    return min(max_degree, n_sizes - 2)


def fit_loglog(params: Any, values: Any, max_degree: int) -> Fit | None:
    """Fit log10(values) against log10(params); degree drops to (distinct sizes - 1) if needed.

    Non-finite or non-positive points are dropped. None when fewer than two sizes remain.
    """
    p, v = np.asarray(params, float), np.asarray(values, float)
    ok = np.isfinite(p) & np.isfinite(v) & (p > 0) & (v > 0)
    x, y = np.log10(p[ok]), np.log10(v[ok])
    n_sizes = len(np.unique(x))
    degree = min(max_degree, n_sizes - 1)
    if degree < 1:
        return None
    coef, r2 = polyfit(x, y, degree)
    return Fit(coef, r2, int(ok.sum()), n_sizes, float(x.min()))


def crossing(fit: Fit, threshold: float, upward: bool = True) -> float | None:
    """Smallest size >= the smallest fitted size where the fit crosses threshold.

    upward=True: where it rises above threshold (logits); False: where it falls below (grad RMS
    reaching epsilon). Already past the threshold at the smallest size -> that size.
    """
    if not (threshold and threshold > 0):
        return None
    t = math.log10(threshold)
    beyond = (lambda y: y >= t) if upward else (lambda y: y <= t)
    if beyond(np.polyval(fit.coef, fit.x_min)):
        return 10 ** fit.x_min
    shifted = fit.coef.astype(float).copy()
    shifted[-1] -= t
    roots = np.roots(shifted)
    slope = np.polyder(fit.coef)
    cands = sorted(r.real for r in roots if abs(r.imag) < 1e-9 and fit.x_min < r.real <= MAX_LOG10_PARAMS
                   and (np.polyval(slope, r.real) > 0) == upward)
    return 10 ** cands[0] if cands else None


def targets_from(options: dict, sizes: list[float]) -> dict[str, float]:
    """Named target sizes: options.forecast_targets, else one more step of the ladder."""
    named = {str(k): float(v) for k, v in (options.get("forecast_targets") or {}).items()}
    if named:
        return named
    sizes = sorted(s for s in sizes if s and s > 0)
    if len(sizes) >= 2:
        return {"next_scale": sizes[-1] ** 2 / sizes[-2]}
    return {}


def logit_points(runs: pl.DataFrame) -> pl.DataFrame:
    """variant, lr, seed, params, logit, failed: the max attention logit at the probe step.

    runs: a runs table with `failed` (sensitivity.with_outcome). A run stopped before the
    probe step has no probe value: its max logit before stopping stands in (a lower bound
    on what the probe would have read).
    """
    return runs.select(
        "variant", "lr", "seed", "scale",
        params=col(runs, "non_embedding_params"),
        logit=pl.coalesce(col(runs, "max_attn_logit_at_probe"), col(runs, "max_attn_logit")),
        failed="failed",
    )


def logit_fit(points: pl.DataFrame, max_degree: int) -> Fit | None:
    """The logit-vs-size fit of one (variant, lr): log10 `logit` against log10 `params`.

    Degree: degree_with_dof over the sizes with a finite positive logit, at most max_degree
    and at least 1 (a line through 2 sizes rather than no fit). None as fit_loglog.
    fit_table (fits.parquet, kind attn_logit) and the forecast both fit through here.
    """
    n_sizes = points.filter(pl.col("logit").is_finite() & (pl.col("logit") > 0))["params"].n_unique()
    return fit_loglog(points["params"], points["logit"], max(1, degree_with_dof(n_sizes, max_degree)))


def _rows(study: str, kind: str, variant: str, lr: float | None, xname: str, yname: str, fit: Fit | None,
          targets: dict[str, float], threshold: float | None, upward: bool, note: str = "") -> list[dict]:
    base = {"study": study, "kind": kind, "variant": variant, "lr": lr, "x": xname, "y": yname,
            "threshold": threshold}
    if fit is None:
        return [{**base, "n_points": 0, "n_sizes": 0, "note": note or "fewer than 2 sizes with data"}]
    cross = crossing(fit, threshold, upward) if threshold else None
    common = {**base, "n_points": fit.n_points, "n_sizes": fit.n_sizes, "degree": fit.degree,
              "coef": [float(c) for c in fit.coef], "r2": fit.r2, "predicted_crossing_params": cross,
              "note": note or None}
    if not targets:
        return [common]
    out = []
    for name, size in targets.items():
        pred = float(fit.predict(size))
        exceeds = None if threshold is None else bool(pred > threshold if upward else pred < threshold)
        out.append({**common, "target_name": name, "target_params": size, "predicted": pred,
                    "predicted_exceeds": exceeds})
    return out


def fit_table(runs: pl.DataFrame, sensitivity: pl.DataFrame, options: dict | None = None,
              study: str = "") -> pl.DataFrame:
    """All fits of one study as FIT_COLUMNS rows (one per fit and target size).

    runs: see sensitivity.scored; sensitivity: sensitivity_table(runs).
    """
    options = options or {}
    threshold = float(options.get("logit_threshold", LOGIT_THRESHOLD))
    if runs.is_empty() or "init_loss" not in runs.columns:
        return pl.DataFrame(schema=FIT_COLUMNS)
    runs = scored(runs)
    sizes = runs["non_embedding_params"].drop_nulls().unique().to_list() if "non_embedding_params" in runs.columns else []
    targets = targets_from(options, sizes)
    rows: list[dict] = []
    deg = 1 if options.get("forecast_degree") == 1 else 2
    # (a) attention logits, quadratic in log-log (finding 8) when a residual dof remains
    pts = logit_points(runs)
    for (variant, lr), g in pts.group_by("variant", "lr", maintain_order=True):
        fit = logit_fit(g, deg)
        note = "linear: fewer than 4 sizes" if fit is not None and fit.degree < deg else ""
        rows += _rows(study, "attn_logit", variant, lr, "non_embedding_params", "max_attn_logit_at_probe",
                      fit, targets, threshold, True, note)
    # (b) gradient RMS vs size, power law, crossing = optim.eps (finding 10); stable runs only
    if "grad_rms_final" in runs.columns:
        stable = runs.filter(~pl.col("failed"))
        eps = col(stable, "optim.eps")
        gr = stable.select("variant", "lr", params=col(stable, "non_embedding_params"),
                           g=col(stable, "grad_rms_final"), eps=eps)
        for (variant, lr), g in gr.group_by("variant", "lr", maintain_order=True):
            e = g["eps"].drop_nulls()
            rows += _rows(study, "grad_rms", variant, lr, "non_embedding_params", "grad_rms_final",
                          fit_loglog(g["params"], g["g"], 1), targets, float(e[0]) if len(e) else None, False)
    # (c) lowest diverging LR vs size: an LR "diverges" at a size when most seeds failed
    div = (runs.group_by("variant", "scale", "lr")
           .agg(params=col(runs, "non_embedding_params").mean(), frac=pl.col("failed").cast(pl.Float64).mean())
           .filter(pl.col("frac") >= 0.5)
           .group_by("variant", "scale").agg(pl.col("params").first(), lowest=pl.col("lr").min()))
    for variant in runs["variant"].unique(maintain_order=True).to_list():
        d = div.filter(pl.col("variant") == variant)
        rows += _rows(study, "lowest_diverging_lr", variant, None, "non_embedding_params", "lr",
                      fit_loglog(d["params"], d["lowest"], 1), targets, None, True,
                      "" if d.height >= 2 else "fewer than 2 sizes with a diverging LR")
    # (d) best loss vs size (power law)
    if not sensitivity.is_empty():
        for (variant,), g in sensitivity.group_by("variant", maintain_order=True):
            rows += _rows(study, "best_loss", variant, None, "non_embedding_params", "best_loss",
                          fit_loglog(g["non_embedding_params"], g["best_loss"], 1), targets, None, False)
    return pl.DataFrame(rows, schema=FIT_COLUMNS)
