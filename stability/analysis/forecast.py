"""Forecasting attention-logit growth (finding 8), with a backtest on the largest scale.

For each LR of the variants without qk-layernorm, fit log10(max attention logit at the
probe step) against log10(non-embedding params):
  * backtest: refit with the largest size held out, predict it, and compare the predicted
    divergence (logit > threshold) with what the held-out runs did;
  * forecast: fit on every size and predict named target sizes (analysis option
    `forecast_targets: {name: params}`, else one more step of the size ladder).
Intervals come from a seeded residual bootstrap (fitted values + resampled residuals,
refit, predict); they have zero width when the fit passes through every point.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.linalg

from .fits import LOGIT_THRESHOLD, Fit, fit_loglog, logit_points, targets_from
from .io import write_json
from .sensitivity import with_outcome

DRAWS = 500
INTERVAL = (5.0, 95.0)  # percentiles of the bootstrap: a 90% interval
CURVE_POINTS = 25  # points of each fitted curve stored for the figure


def requested(study_info: dict) -> bool:
    return 8 in (study_info.get("findings") or []) or bool((study_info.get("options") or {}).get("forecast"))


def forecast_variants(runs: pl.DataFrame, options: dict) -> tuple[list[str], str]:
    """The variants to forecast: options.forecast_variants, else those without qk-layernorm."""
    all_variants = runs["variant"].unique(maintain_order=True).to_list()
    if options.get("forecast_variants"):
        return [v for v in options["forecast_variants"] if v in all_variants], "variants from options.forecast_variants"
    if "model.qk_layernorm" in runs.columns:
        off = runs.filter(pl.col("model.qk_layernorm") == "none")["variant"].unique(maintain_order=True).to_list()
        if off:
            return off, "variants with model.qk_layernorm = none"
    return all_variants, "no variant without qk-layernorm: forecasting every variant"


def bootstrap(fit_x: np.ndarray, fit_y: np.ndarray, degree: int, x_eval: np.ndarray, draws: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) percentiles of log10 predictions at x_eval under a residual bootstrap."""
    A = np.vander(fit_x, degree + 1)
    coef, *_ = scipy.linalg.lstsq(A, fit_y)
    yhat = A @ coef
    n, p = len(fit_x), degree + 1
    # Residuals of a least-squares fit are shrunk by the p fitted parameters: rescale them.
    resid = (fit_y - yhat) * (np.sqrt(n / (n - p)) if n > p else 0.0)
    ystar = yhat[None, :] + rng.choice(resid, size=(draws, n), replace=True)
    coefs, *_ = scipy.linalg.lstsq(A, ystar.T)  # one solve, every draw a right-hand side
    preds = np.vander(x_eval, degree + 1) @ coefs  # (len(x_eval), draws)
    lo, hi = np.percentile(preds, INTERVAL, axis=1)
    return lo, hi


def _fit_and_band(points: pl.DataFrame, max_degree: int, x_eval_params: list[float], draws: int,
                  rng: np.random.Generator) -> tuple[Fit | None, np.ndarray, np.ndarray, np.ndarray]:
    p = points["params"].to_numpy().astype(float)
    y = points["logit"].to_numpy().astype(float)
    fit = fit_loglog(p, y, max_degree)
    if fit is None:
        nan = np.full(len(x_eval_params), np.nan)
        return None, nan, nan, nan
    ok = np.isfinite(p) & np.isfinite(y) & (p > 0) & (y > 0)
    x_eval = np.log10(np.asarray(x_eval_params, float))
    lo, hi = bootstrap(np.log10(p[ok]), np.log10(y[ok]), fit.degree, x_eval, draws, rng)
    return fit, fit.predict(x_eval_params), 10 ** lo, 10 ** hi


def _curve(fit: Fit | None, lo_size: float, hi_size: float, points: pl.DataFrame, draws: int,
           rng: np.random.Generator, max_degree: int) -> list[dict]:
    if fit is None:
        return []
    grid = list(np.logspace(np.log10(lo_size), np.log10(hi_size), CURVE_POINTS))
    _, mid, lo, hi = _fit_and_band(points, max_degree, grid, draws, rng)
    return [{"params": float(g), "fit": float(m), "lo": float(a), "hi": float(b)} for g, m, a, b in zip(grid, mid, lo, hi)]


def observed_threshold(pts: pl.DataFrame, threshold: float) -> dict[str, Any]:
    """How well the logit threshold separates failed from stable runs in this study."""
    ok = pts.filter(pl.col("logit").is_not_null() & pl.col("logit").is_finite())
    above = ok.filter(pl.col("logit") > threshold)
    return {
        "min_logit_failed": ok.filter(pl.col("failed"))["logit"].min(),
        "max_logit_stable": ok.filter(~pl.col("failed"))["logit"].max(),
        "n_above_threshold": above.height,
        "frac_above_threshold_failed": above["failed"].mean() if above.height else None,
    }


def forecast(runs: pl.DataFrame, study_info: dict) -> dict[str, Any]:
    """The forecast.json document of one study."""
    options = study_info.get("options") or {}
    out: dict[str, Any] = {"study": study_info.get("name"), "status": "ok", "notes": []}
    if not requested(study_info):
        return {**out, "status": "not_requested"}
    if runs.is_empty() or "init_loss" not in runs.columns:
        return {**out, "status": "no_data", "notes": ["no finished runs"]}
    threshold = float(options.get("logit_threshold", LOGIT_THRESHOLD))
    draws = int(options.get("bootstrap_draws", DRAWS))
    max_degree = 1 if options.get("forecast_degree") == 1 else 2
    rng = np.random.default_rng(int(options.get("bootstrap_seed", 0)))
    runs = with_outcome(runs)
    variants, why = forecast_variants(runs, options)
    pts = logit_points(runs).filter(pl.col("variant").is_in(variants))
    sizes = sorted(pts["params"].drop_nulls().unique().to_list())
    targets = targets_from(options, sizes)
    out.update(threshold=threshold, probe_metric="max_attn_logit_at_probe", variants=variants, sizes=sizes,
               bootstrap={"draws": draws, "percentiles": list(INTERVAL), "seed": int(options.get("bootstrap_seed", 0))},
               observed_threshold=observed_threshold(pts, threshold), targets=targets)
    out["notes"].append(why)
    if len(sizes) < 2:
        return {**out, "status": "insufficient_scales", "notes": out["notes"] + ["fewer than 2 sizes"]}
    if len(sizes) < 3:
        out["notes"].append("fewer than 3 sizes: the full fit is linear, not quadratic")
    held_out = sizes[-1]
    out["held_out_params"] = held_out
    out["backtest_status"] = "ok"
    if len(sizes) < 3:
        out["backtest_status"] = "insufficient_scales"
        out["notes"].append("fewer than 3 sizes: no backtest (it needs 2 fitted sizes plus the held-out one)")
    elif len(sizes) < 4 and max_degree == 2:
        out["notes"].append("fewer than 4 sizes: the backtest fit is linear, not quadratic")
    curve_hi = max([held_out, *targets.values()])
    backtest, forecasts, fits = [], [], []
    for (variant, lr), g in pts.sort("variant", "lr", "params").group_by("variant", "lr", maintain_order=True):
        fit, pred, lo, hi = _fit_and_band(g, max_degree, list(targets.values()), draws, rng)
        fits.append({"variant": variant, "lr": lr, "degree": fit.degree if fit else None,
                     "coef": list(map(float, fit.coef)) if fit else None, "r2": fit.r2 if fit else None,
                     "n_points": fit.n_points if fit else 0,
                     "points": g.select("params", "logit", "failed", "seed").to_dicts()})
        for (name, size), m, a, b in zip(targets.items(), pred, lo, hi):
            forecasts.append({"variant": variant, "lr": lr, "target": name, "target_params": size,
                              "predicted": m, "interval": [a, b],
                              "predicted_diverged": bool(m > threshold) if np.isfinite(m) else None})
        if len(sizes) < 3:
            continue
        train, test = g.filter(pl.col("params") < held_out), g.filter(pl.col("params") == held_out)
        bfit, bpred, blo, bhi = _fit_and_band(train, max_degree, [held_out], draws, rng)
        obs_logit = test["logit"].drop_nulls()
        obs_failed = test["failed"].cast(pl.Float64).mean() if test.height else None
        entry = {"variant": variant, "lr": lr, "n_points": bfit.n_points if bfit else 0,
                 "degree": bfit.degree if bfit else None, "coef": list(map(float, bfit.coef)) if bfit else None,
                 "predicted": float(bpred[0]), "interval": [float(blo[0]), float(bhi[0])],
                 "predicted_diverged": bool(bpred[0] > threshold) if np.isfinite(bpred[0]) else None,
                 "observed_max_logit": float(obs_logit.max()) if len(obs_logit) else None,
                 "observed_diverged": None if obs_failed is None else bool(obs_failed >= 0.5),
                 "curve": _curve(bfit, sizes[0], curve_hi, train, draws, rng, max_degree)}
        entry["observed_above_threshold"] = (None if entry["observed_max_logit"] is None
                                             else entry["observed_max_logit"] > threshold)
        entry["correct"] = (None if entry["predicted_diverged"] is None or entry["observed_diverged"] is None
                            else entry["predicted_diverged"] == entry["observed_diverged"])
        backtest.append(entry)
    scored = [e["correct"] for e in backtest if e["correct"] is not None]
    out.update(fits=fits, forecasts=forecasts, backtest=backtest, n_scored=len(scored),
               score=(sum(scored) / len(scored)) if scored else None)
    if len(sizes) >= 3 and not scored:
        out["notes"].append("no LR had both a prediction and an observed outcome at the held-out size")
    return out


def write_forecast(runs: pl.DataFrame, study_info: dict, path: Path) -> dict[str, Any]:
    doc = forecast(runs, study_info)
    write_json(doc, path)
    return doc


def forecast_table(fc: dict) -> pl.DataFrame:
    """One row per backtest point and per forecast: the table the report shows."""
    rows = []
    for b in fc.get("backtest") or []:
        lo, hi = (b.get("interval") or [None, None])[:2]
        rows.append({"kind": "backtest (largest scale held out)", "variant": b.get("variant"), "lr": b.get("lr"),
                     "params": fc.get("held_out_params"), "predicted_max_logit": b.get("predicted"),
                     "interval_lo": lo, "interval_hi": hi, "predicted_diverged": b.get("predicted_diverged"),
                     "observed_max_logit": b.get("observed_max_logit"), "observed_diverged": b.get("observed_diverged")})
    for f in fc.get("forecasts") or []:
        lo, hi = (f.get("interval") or [None, None])[:2]
        rows.append({"kind": f"forecast: {f.get('target')}", "variant": f.get("variant"), "lr": f.get("lr"),
                     "params": f.get("target_params"), "predicted_max_logit": f.get("predicted"),
                     "interval_lo": lo, "interval_hi": hi, "predicted_diverged": f.get("predicted_diverged"),
                     "observed_max_logit": None, "observed_diverged": None})
    schema = {"kind": pl.String, "variant": pl.String, "lr": pl.Float64, "params": pl.Float64,
              "predicted_max_logit": pl.Float64, "interval_lo": pl.Float64, "interval_hi": pl.Float64,
              "predicted_diverged": pl.Boolean, "observed_max_logit": pl.Float64, "observed_diverged": pl.Boolean}
    return pl.DataFrame(rows, schema=schema)
