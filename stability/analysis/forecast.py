"""Forecasting attention-logit growth (finding 8; Wortsman et al. 2023, Sec. 3.4, Fig. 12).

For each LR of the variants without qk-layernorm, fit log10(max attention logit at the
probe step) against log10(non-embedding params), a polynomial in log-log space:

  * backtest: refit with the largest size held out, predict it, and score the calls
    "diverges" (predicted logit > threshold) against what the held-out runs did, beside
    the no-skill persistence baseline "the held-out size does what the next smaller size
    did at this LR", and score the predicted logit itself: |log10 pred - log10 obs| (decades);
  * forecast: fit on every size and predict named target sizes (analysis option
    `forecast_targets: {name: params}`, else one more step of the size ladder).

Rules fixed before any data:
  * Degree: fits.degree_with_dof; at most `forecast_degree` (default 2, the paper's
    quadratic) and at most (fitted sizes - 2), so every fit keeps a residual degree of
    freedom: a line through 3 sizes, a quadratic only from 4. A backtest needs 3 fitted
    sizes (4 in all); an LR with fewer fitted sizes gets no forecast call (scored as wrong).
  * Probe before failure: a forecast reads the logit at the probe step
    (`max_attn_logit_at_probe`, the last log at or before `train.probe_step`) and only
    before the run failed. A run failed before the probe (`failed_before_probe`) when it
    stopped before the probe step, or the divergence detector had already seen its loss
    above init_loss + margin at the probe (flagged within (window - 1) log intervals after
    it), or it went non-finite by then. Such runs are neither fitted, nor calibrate the
    threshold, nor are scored: a failure the probe read after the fact is not a forecast.
    A stalled run (scored failed at the end, never flagged) has no failure time in the run
    summary and counts as failing after the probe.
  * Threshold (`threshold_rule`): "calibrated" (default) takes the logit that best
    separates failed from trained runs at the probe step among the fitted sizes only (the
    geometric midpoint of the widest gap among those with the fewest misclassified runs),
    as the paper took its 1e4 from its own sweeps; the held-out size never informs it.
    Without both failed and trained fitted runs, or with `forecast_threshold: fixed`, the
    fixed `logit_threshold` (the paper's 1e4) is used.
  * Scores: every LR with an observed outcome at the held-out size is scored for both the
    forecast and persistence; a missing call is a wrong call. `informative` marks the LRs
    where the held-out size did not do what the next smaller one did (persistence wrong).

Intervals come from a seeded residual bootstrap (fitted values + resampled residuals,
rescaled by sqrt(n / (n - p)), refit, predict); they have non-zero width whenever the fit
leaves non-zero residuals.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
import scipy.linalg

from .. import interventions
from ..config import RunConfig
from .fits import LOGIT_THRESHOLD, Fit, degree_with_dof, logit_fit, logit_points, targets_from
from .sensitivity import col, scored

DRAWS = 500
INTERVAL = (5.0, 95.0)  # percentiles of the bootstrap: a 90% interval
CURVE_POINTS = 25  # points of each backtest curve (smallest to held-out size) stored for the figure
MIN_FITTED_SIZES = 3  # a line through 3 sizes is the smallest fit with a residual degree of freedom
_TRAIN_DEFAULTS = RunConfig().train


def requested(study_info: dict) -> bool:
    return 8 in (study_info.get("findings") or []) or bool((study_info.get("options") or {}).get("forecast"))


def forecast_variants(runs: pl.DataFrame, options: dict) -> tuple[list[str], str]:
    """The variants to forecast: options.forecast_variants, else those whose runs have no
    intervention on that mitigates attention-logit growth (stability.interventions: the
    forecast is of logit growth left unchecked). A key the table lacks has its default."""
    all_variants = runs["variant"].unique(maintain_order=True).to_list()
    if options.get("forecast_variants"):
        return [v for v in options["forecast_variants"] if v in all_variants], "variants from options.forecast_variants"
    interventions.load_plugins_of(runs)  # a user's intervention counts as a mitigation too
    guards = interventions.mitigating("attention_logit_growth")
    keys = [k for iv in guards for k in iv.keys if k in runs.columns]
    guarded = {r["variant"] for r in runs.select("variant", *keys).to_dicts() if any(iv.on_in(r) for iv in guards)}
    off = [v for v in all_variants if v not in guarded]
    names = ", ".join(iv.name for iv in guards)
    if off:
        return off, f"variants with no attention-logit mitigation on ({names} off)"
    return all_variants, f"every variant has an attention-logit mitigation on ({names}): forecasting every variant"


def failed_before_probe(runs: pl.DataFrame) -> pl.Expr:
    """True for a run whose failure came at or before its probe step (module docstring).

    Reads the run summary (probe_step, steps_completed, diverged_step, diverged_reason) and
    the run config (train.probe_step, train.log_every, train.divergence_window); a run
    table without them (planted studies) counts every run as probed before failing.
    """
    probe = pl.coalesce(col(runs, "probe_step"), col(runs, "train.probe_step"))
    log_every = col(runs, "train.log_every").fill_null(_TRAIN_DEFAULTS.log_every)
    window = col(runs, "train.divergence_window").fill_null(_TRAIN_DEFAULTS.divergence_window)
    reason = col(runs, "diverged_reason", pl.String)
    # The detector flags a loss above init + margin only after `window` consecutive logs.
    lag = pl.when(reason.str.starts_with("non-finite").fill_null(False)).then(0.0).otherwise((window - 1) * log_every)
    diverged = col(runs, "diverged", pl.Boolean).fill_null(False)
    flagged_by_probe = diverged & ((col(runs, "diverged_step") - lag) <= probe).fill_null(False)
    stopped_before = (col(runs, "steps_completed") < probe).fill_null(False)
    return flagged_by_probe | stopped_before


def probe_points(runs: pl.DataFrame) -> pl.DataFrame:
    """variant, lr, seed, scale, params, logit, failed, failed_before_probe: one row per run.

    logit is the max attention logit at the probe step and nothing else (a run with no
    finite probe value has none); tables without that column fall back to fits.logit_points.
    runs: a runs table with `failed` (sensitivity.with_outcome).
    """
    runs = runs.with_columns(failed_before_probe=failed_before_probe(runs))
    pts = logit_points(runs).with_columns(failed_before_probe=runs["failed_before_probe"])
    if "max_attn_logit_at_probe" in runs.columns:
        pts = pts.with_columns(logit=runs["max_attn_logit_at_probe"].cast(pl.Float64))
    return pts


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


def _usable(points: pl.DataFrame) -> pl.DataFrame:
    """Points a fit may use: a finite positive probe logit read before the run failed."""
    return points.filter(pl.col("logit").is_not_null() & pl.col("logit").is_finite() & (pl.col("logit") > 0)
                         & (pl.col("params") > 0) & ~pl.col("failed_before_probe"))


def _band(points: pl.DataFrame, fit: Fit | None, x_eval_params: list[float], draws: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, lo, hi) of `fit` (made from `points`) at x_eval_params; NaN without a fit."""
    if fit is None:
        nan = np.full(len(x_eval_params), np.nan)
        return nan, nan, nan
    p = points["params"].to_numpy().astype(float)
    y = points["logit"].to_numpy().astype(float)
    x_eval = np.log10(np.asarray(x_eval_params, float))
    lo, hi = bootstrap(np.log10(p), np.log10(y), fit.degree, x_eval, draws, rng)
    return fit.predict(x_eval_params), 10 ** lo, 10 ** hi


def _curve(fit: Fit | None, lo_size: float, hi_size: float, points: pl.DataFrame, draws: int,
           rng: np.random.Generator) -> list[dict]:
    if fit is None:
        return []
    grid = list(np.logspace(np.log10(lo_size), np.log10(hi_size), CURVE_POINTS))
    mid, lo, hi = _band(points, fit, grid, draws, rng)
    return [{"params": float(g), "fit": float(m), "lo": float(a), "hi": float(b)} for g, m, a, b in zip(grid, mid, lo, hi)]


def calibrate_threshold(points: pl.DataFrame) -> dict[str, Any] | None:
    """The probe logit that best separates failed from trained runs (module docstring).

    points: rows with logit and failed. Returns {threshold, n_runs, n_misclassified,
    max_logit_trained, min_logit_failed}, or None without both failed and trained runs.
    """
    ok = points.filter(pl.col("logit").is_not_null() & pl.col("logit").is_finite() & (pl.col("logit") > 0))
    if ok.is_empty() or ok["failed"].all() or not ok["failed"].any():
        return None
    logs = np.log10(ok["logit"].to_numpy().astype(float))
    failed = ok["failed"].to_numpy().astype(bool)
    levels = np.unique(logs)
    best = None
    for lo, hi in zip(levels[:-1], levels[1:]):  # a cut in each gap between neighbouring logits
        cut = (lo + hi) / 2
        errors = int(np.sum((logs > cut) != failed))
        key = (errors, -(hi - lo))
        if best is None or key < best[0]:
            best = (key, cut)
    if best is None:  # every run has the same logit: nothing separates them
        return None
    return {"threshold": float(10 ** best[1]), "n_runs": int(len(logs)), "n_misclassified": best[0][0],
            "max_logit_trained": float(10 ** logs[~failed].max()), "min_logit_failed": float(10 ** logs[failed].min())}


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


def _majority_failed(rows: pl.DataFrame) -> bool | None:
    return None if rows.is_empty() else bool(rows["failed"].cast(pl.Float64).mean() >= 0.5)


def forecast(runs: pl.DataFrame, study_info: dict) -> dict[str, Any]:
    """The forecast.json document of one study. runs: see sensitivity.scored."""
    options = study_info.get("options") or {}
    out: dict[str, Any] = {"study": study_info.get("name"), "status": "ok", "notes": []}
    if not requested(study_info):
        return {**out, "status": "not_requested"}
    if runs.is_empty() or "init_loss" not in runs.columns:
        return {**out, "status": "no_data", "notes": ["no finished runs"]}
    fixed = float(options.get("logit_threshold", LOGIT_THRESHOLD))
    calibrate = options.get("forecast_threshold", "calibrated") != "fixed"
    draws = int(options.get("bootstrap_draws", DRAWS))
    max_degree = 1 if options.get("forecast_degree") == 1 else 2
    rng = np.random.default_rng(int(options.get("bootstrap_seed", 0)))
    runs = scored(runs)
    variants, why = forecast_variants(runs, options)
    pts = probe_points(runs).filter(pl.col("variant").is_in(variants))
    sizes = sorted(pts["params"].drop_nulls().unique().to_list())
    targets = targets_from(options, sizes)
    probe = (runs.select(p=pl.coalesce(col(runs, "probe_step"), col(runs, "train.probe_step")))["p"]
             .drop_nulls().unique().sort().to_list())
    out.update(probe_metric="max_attn_logit_at_probe", probe_step=probe[0] if len(probe) == 1 else (probe or None),
               variants=variants, sizes=sizes, targets=targets, threshold_fixed=fixed,
               bootstrap={"draws": draws, "percentiles": list(INTERVAL), "seed": int(options.get("bootstrap_seed", 0))},
               n_failed_before_probe=int(pts["failed_before_probe"].sum()))
    out["notes"].append(why)
    if len(sizes) < 2:
        return {**out, "threshold": fixed, "threshold_rule": "fixed", "status": "insufficient_scales",
                "observed_threshold": observed_threshold(pts, fixed), "notes": out["notes"] + ["fewer than 2 sizes"]}
    backtest_ok = len(sizes) >= MIN_FITTED_SIZES + 1
    held_out = sizes[-1]
    fitted_sizes = sizes[:-1] if backtest_ok else sizes
    usable = _usable(pts)
    cal = calibrate_threshold(usable.filter(pl.col("params").is_in(fitted_sizes))) if calibrate else None
    threshold = cal["threshold"] if cal else fixed
    out.update(threshold=threshold, threshold_rule="calibrated" if cal else "fixed", threshold_calibration=cal,
               observed_threshold=observed_threshold(pts, threshold))
    if calibrate and cal is None:
        out["notes"].append("the fitted sizes lack failed or trained runs to calibrate on: fixed threshold")
    out["held_out_params"] = held_out
    out["backtest_status"] = "ok" if backtest_ok else "insufficient_scales"
    if not backtest_ok:
        out["notes"].append(f"fewer than {MIN_FITTED_SIZES + 1} sizes: no backtest (it needs {MIN_FITTED_SIZES} "
                            "fitted sizes, a fit with a residual degree of freedom, plus the held-out one)")
    else:
        out.update(fitted_sizes=fitted_sizes, persistence_params=fitted_sizes[-1])
    if degree_with_dof(len(sizes), max_degree) < max_degree:
        out["notes"].append("fewer than 4 sizes: the fits are linear, not quadratic (a residual degree of freedom)")
    backtest, forecasts, fits = [], [], []
    for (variant, lr), g in pts.sort("variant", "lr", "params").group_by("variant", "lr", maintain_order=True):
        gu = _usable(g)
        n_sizes = gu["params"].n_unique()
        fit = logit_fit(gu, max_degree)
        pred, lo, hi = _band(gu, fit, list(targets.values()), draws, rng)
        fits.append({"variant": variant, "lr": lr, "degree": fit.degree if fit else None,
                     "coef": list(map(float, fit.coef)) if fit else None, "r2": fit.r2 if fit else None,
                     "n_points": fit.n_points if fit else 0, "n_sizes": n_sizes,
                     "points": g.select("params", "logit", "failed", "seed", "failed_before_probe").to_dicts()})
        for (name, size), m, a, b in zip(targets.items(), pred, lo, hi):
            forecasts.append({"variant": variant, "lr": lr, "target": name, "target_params": size,
                              "predicted": m, "interval": [a, b],
                              "predicted_diverged": bool(m > threshold) if np.isfinite(m) else None})
        if backtest_ok:
            backtest.append(_backtest_entry(variant, lr, g, gu, fitted_sizes, held_out, threshold, max_degree,
                                            sizes[0], held_out, draws, rng))
    out.update(fits=fits, forecasts=forecasts, backtest=backtest)
    out.update(_scores(backtest))
    if backtest_ok and not out["n_scored"]:
        out["notes"].append("no LR had an observed outcome (probed before failing) at the held-out size")
    return out


def _backtest_entry(variant: str, lr: float, g: pl.DataFrame, gu: pl.DataFrame, fitted_sizes: list[float],
                    held_out: float, threshold: float, max_degree: int, lo_size: float, hi_size: float, draws: int,
                    rng: np.random.Generator) -> dict[str, Any]:
    """One (variant, lr) of the backtest: forecast and persistence calls, and the logit error."""
    train = gu.filter(pl.col("params").is_in(fitted_sizes))
    n_fit_sizes = train["params"].n_unique()
    bfit = logit_fit(train, max_degree) if degree_with_dof(n_fit_sizes, max_degree) >= 1 else None
    bpred, blo, bhi = _band(train, bfit, [held_out], draws, rng)
    test = g.filter(pl.col("params") == held_out)
    scorable = test.filter(~pl.col("failed_before_probe"))
    previous = g.filter(pl.col("params") == fitted_sizes[-1])
    obs_logit = _usable(scorable)["logit"]
    pred = float(bpred[0])
    predicted = bool(pred > threshold) if np.isfinite(pred) else None
    observed = _majority_failed(scorable)
    persistence = _majority_failed(previous)
    obs_max = float(obs_logit.max()) if len(obs_logit) else None
    # the fit is least squares in log space: compare it with the seeds' mean log logit
    obs_geo = float(10 ** np.log10(obs_logit.to_numpy()).mean()) if len(obs_logit) else None
    entry = {"variant": variant, "lr": lr, "n_points": bfit.n_points if bfit else 0, "n_fitted_sizes": n_fit_sizes,
             "degree": bfit.degree if bfit else None, "coef": list(map(float, bfit.coef)) if bfit else None,
             "predicted": pred if np.isfinite(pred) else None,
             "interval": [float(blo[0]), float(bhi[0])] if bfit else None,
             "predicted_diverged": predicted, "observed_max_logit": obs_max, "observed_logit_geomean": obs_geo,
             "observed_diverged": observed,
             "n_failed_before_probe": int(test["failed_before_probe"].sum()),
             "persistence_diverged": persistence,
             "largest_fitted_stable": bool(previous.height and not previous["failed"].any()),
             "curve": _curve(bfit, lo_size, hi_size, train, draws, rng)}
    entry["observed_above_threshold"] = None if obs_max is None else obs_max > threshold
    entry["correct"] = None if observed is None else (predicted is not None and predicted == observed)
    entry["persistence_correct"] = None if observed is None else (persistence is not None and persistence == observed)
    entry["informative"] = None if observed is None else persistence != observed
    entry["log10_error"] = (abs(math.log10(pred) - math.log10(obs_geo))
                            if obs_geo is not None and np.isfinite(pred) and pred > 0 else None)
    return entry


def _scores(backtest: list[dict]) -> dict[str, Any]:
    """Backtest totals: forecast and persistence on the same scored LRs, and the logit error."""
    scored = [e for e in backtest if e["correct"] is not None]
    n = len(scored)
    right = sum(e["correct"] for e in scored)
    right_p = sum(e["persistence_correct"] for e in scored)
    errors = [e["log10_error"] for e in backtest if e["largest_fitted_stable"] and e["log10_error"] is not None]
    return {"n_scored": n, "n_correct": right, "score": right / n if n else None,
            "persistence_n_correct": right_p, "persistence_score": right_p / n if n else None,
            "n_informative": sum(bool(e["informative"]) for e in scored),
            "n_forecast_calls": sum(e["predicted_diverged"] is not None for e in scored),
            "n_magnitude_scored": len(errors), "max_log10_error": max(errors) if errors else None,
            "median_log10_error": float(np.median(errors)) if errors else None}


def forecast_table(fc: dict) -> pl.DataFrame:
    """One row per backtest point and per forecast: the table the report shows."""
    rows = []
    for b in fc.get("backtest") or []:
        lo, hi = (b.get("interval") or [None, None])[:2]
        rows.append({"kind": "backtest (largest scale held out)", "variant": b.get("variant"), "lr": b.get("lr"),
                     "params": fc.get("held_out_params"), "predicted_max_logit": b.get("predicted"),
                     "interval_lo": lo, "interval_hi": hi, "predicted_diverged": b.get("predicted_diverged"),
                     "observed_max_logit": b.get("observed_max_logit"), "observed_diverged": b.get("observed_diverged"),
                     "persistence_diverged": b.get("persistence_diverged"), "log10_error": b.get("log10_error")})
    for f in fc.get("forecasts") or []:
        lo, hi = (f.get("interval") or [None, None])[:2]
        rows.append({"kind": f"forecast: {f.get('target')}", "variant": f.get("variant"), "lr": f.get("lr"),
                     "params": f.get("target_params"), "predicted_max_logit": f.get("predicted"),
                     "interval_lo": lo, "interval_hi": hi, "predicted_diverged": f.get("predicted_diverged"),
                     "observed_max_logit": None, "observed_diverged": None, "persistence_diverged": None,
                     "log10_error": None})
    schema = {"kind": pl.String, "variant": pl.String, "lr": pl.Float64, "params": pl.Float64,
              "predicted_max_logit": pl.Float64, "interval_lo": pl.Float64, "interval_hi": pl.Float64,
              "predicted_diverged": pl.Boolean, "observed_max_logit": pl.Float64, "observed_diverged": pl.Boolean,
              "persistence_diverged": pl.Boolean, "log10_error": pl.Float64}
    return pl.DataFrame(rows, schema=schema)
