"""Check each paper finding a study covers against its data.

Every claim is {finding, statement, quantity, measured, reproduced, note}: `measured` holds
only numbers computed here from the study's tables, `reproduced` is True / False, or None
when the study lacks the runs the check needs (the note says which). Roles come from the
run configs (which variant turns qk-layernorm off, which changes epsilon...), not names.

The pass/fail thresholds below are fixed in advance from the paper's wording; they are
not tuned to make any study pass.
"""
from __future__ import annotations

import math
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import scipy.stats

from . import roles
from .fits import polyfit
from .io import write_json
from .sensitivity import col, with_outcome

LOGIT_RATIO_MIN = 10.0  # F1: "logits grow": max logit without qk-ln > 10x with it
MAJORITY = 0.5  # "at most scales": strictly more than half of the compared scales
# F2 reads the RMS over tokens of log Z (logz_rms_final = sqrt of the unscaled z-loss, the
# quantity z-loss penalises). Session 1 read |mean log Z|, which cancels when log Z spreads
# both ways (a 30k-step probe: mean -0.2, RMS 15.7), and measures drift from the step-0
# value, since log Z starts near log(vocab), not 0. Both changes only make the check stricter
# (at 300 steps the drift half now reads "no"); the thresholds did not change.
LOGZ_DRIFT = 1.0  # F2: RMS log Z grown >= 1 nat above its step-0 value counts as drift
LOGZ_SMALL = 0.5  # F2: RMS log Z < 0.5 nat counts as held near 0
KNOB_FACTOR = 2.0  # F7: "did not change sensitivity": within a factor of 2 ...
SENS_ABS_TOL = 0.05  # ... or within 0.05 nats (the noise floor of a small proxy's sensitivity)
KNOB_AGREE_FRAC = 0.75  # F7: share of (variant, scale) comparisons that must agree
FORECAST_MIN_SCORE = 0.8  # F8: share of LRs whose divergence forecast was right
KAPPA_RHO_MIN = 0.8  # F9: Spearman rank correlation of best loss with kappa
UPDATE_COLLAPSE = 0.5  # F10: update RMS at large eps below half of that at small eps
SENS_TIE_TOL = 0.01  # F11: sensitivities within 0.01 nats count as a tie
# F11: config keys of the paper's four mitigations (qk-layernorm, z-loss, independent decay, warm-up).
MITIGATION_KEYS = frozenset({"model.qk_layernorm", "loss.z_loss", "optim.weight_decay",
                             "optim.independent_weight_decay", "optim.warmup_steps"})

STATEMENTS = {
    1: "Without qk-layernorm attention logits grow with LR and scale and runs diverge; qk-layernorm removes this and lowers LR sensitivity.",
    2: "Without weight decay, output logits drift so log Z leaves 0 late in training; z-loss removes it.",
    3: "Longer warm-up lowers LR sensitivity, mostly for larger models.",
    4: "Independent weight decay lowers LR sensitivity compared with coupled decay.",
    5: "Scaling depth raises LR sensitivity faster than scaling width.",
    6: "muParam keeps the optimal LR stable across width but does not lower LR sensitivity.",
    7: "2x more or fewer steps, or a larger batch with fewer steps, do not change LR sensitivity.",
    8: "A quadratic fit of max attention logit vs model size (per LR) forecasts which larger runs diverge.",
    9: "Pinning logits near kappa with the qk transplant degrades loss as kappa grows (from about 1e3).",
    10: "Gradient RMS falls with size and LR; near AdamW epsilon the update RMS collapses.",
    11: "With all mitigations on, loss is nearly flat across LRs at every scale; removing any one brings back failures.",
}
QUANTITIES = {
    1: "max attention logit at the highest LR (largest scale) and LR sensitivity per scale, qk-layernorm off vs on",
    2: "RMS over tokens of log Z at the end of training at the highest LR, per scale: its growth from step 0 without z-loss and decay, and its size with z-loss",
    3: "LR sensitivity per scale, shortest vs longest warm-up",
    4: "LR sensitivity per scale, independent vs coupled weight decay",
    5: "slope of LR sensitivity vs log10(non-embedding params), depth ladder vs width ladder",
    6: "log10 range of the fitted optimal LR across scales, muParam vs standard",
    7: "ratio of LR sensitivity to the reference's, per knob variant and scale",
    8: "backtest: fraction of LRs whose divergence at the held-out (largest) size was predicted right",
    9: "Spearman correlation of best loss with kappa, per scale",
    10: "grad RMS slope vs size and vs LR; update RMS at large vs small epsilon",
    11: "LR sensitivity of the reference (all mitigations) vs every other variant, per scale",
}


# ---- context -----------------------------------------------------------------------------

class Ctx:
    """The study's tables plus the lookups every check needs."""

    def __init__(self, info: Any, runs: pl.DataFrame, sens: pl.DataFrame, fits: pl.DataFrame | None,
                 forecast: dict | None):
        get = (lambda k, d=None: info.get(k, d)) if isinstance(info, dict) else (lambda k, d=None: getattr(info, k, d))
        self.name = get("name", "")
        self.findings = list(get("findings", []) or [])
        self.reference = get("reference", None)
        self.options = dict(get("options", {}) or {})
        has_runs = not runs.is_empty() and "init_loss" in runs.columns
        self.runs = with_outcome(runs) if has_runs else pl.DataFrame()
        self.sens = sens
        self.fits = fits if fits is not None else pl.DataFrame()
        self.forecast = forecast or {}
        self.configs = roles.variant_configs(self.runs) if has_runs else {}
        if self.reference not in self.configs and self.configs:
            self.reference = next(iter(self.configs))
        self.scale_order = (self.sens.sort("non_embedding_params")["scale"].unique(maintain_order=True).to_list()
                            if not sens.is_empty() else [])

    def cfg(self, variant: str, key: str, default: Any = None) -> Any:
        return roles.value(self.configs, variant, key, default)

    def variants_where(self, pred: Callable[[dict], bool]) -> list[str]:
        return [v for v, c in self.configs.items() if pred(c)]

    def by_scale(self, variant: str, column: str = "sensitivity") -> dict[str, float]:
        """scale -> a sensitivity.parquet column (sensitivity, best_lr_fit, best_loss...) of one variant."""
        if self.sens.is_empty():
            return {}
        rows = self.sens.filter(pl.col("variant") == variant)
        return {s: v for s, v in zip(rows["scale"], rows[column]) if v is not None}

    def lrs(self, variant: str) -> set[float]:
        return set(self.runs.filter(pl.col("variant") == variant)["lr"].to_list())

    def per_scale(self, variant: str, column: str, lr: float | None = None,
                  stable_only: bool = False) -> dict[str, float]:
        """Mean over seeds (and LRs unless lr is given) of a runs column, per scale."""
        if column not in self.runs.columns:
            return {}
        df = self.runs.filter(pl.col("variant") == variant)
        if lr is not None:
            df = df.filter(pl.col("lr") == lr)
        if stable_only:
            df = df.filter(~pl.col("failed"))
        df = df.with_columns(_x=col(df, column)).filter(pl.col("_x").is_not_null() & pl.col("_x").is_finite())
        g = df.group_by("scale").agg(pl.col("_x").mean())
        return dict(zip(g["scale"], g["_x"]))

    def ordered(self, scales: set[str] | list[str]) -> list[str]:
        scales = set(scales)
        return [s for s in self.scale_order if s in scales] + sorted(scales - set(self.scale_order))


def claim(finding: int, measured: dict, reproduced: bool | None, note: str = "") -> dict[str, Any]:
    return {"finding": finding, "statement": STATEMENTS.get(finding, ""), "quantity": QUANTITIES.get(finding, ""),
            "measured": measured, "reproduced": reproduced, "note": note}


def no_data(finding: int, note: str, measured: dict | None = None) -> dict[str, Any]:
    return claim(finding, measured or {}, None, note)


def _frac(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _one_factor(ctx: Ctx, keys: set[str], pred: Callable[[dict], bool]) -> tuple[list[str], str]:
    """Variants matching pred, preferring those that differ from the reference only in keys."""
    fam = [v for v in roles.family(ctx.configs, ctx.reference, keys) if pred(ctx.configs[v])]
    if fam:
        return fam, ""
    anyv = ctx.variants_where(pred)
    return anyv, ("not a one-factor comparison: these variants differ from the reference in more than "
                  + ", ".join(sorted(keys))) if anyv else ""


def _compare_sensitivity(ctx: Ctx, better: str, worse: str) -> dict[str, Any]:
    """Per common scale: is `better`'s sensitivity lower than `worse`'s?"""
    a, b = ctx.by_scale(better), ctx.by_scale(worse)
    scales = ctx.ordered(set(a) & set(b))
    lower = [a[s] < b[s] for s in scales]
    return {"scales": scales, f"sensitivity_{better}": [a[s] for s in scales],
            f"sensitivity_{worse}": [b[s] for s in scales], "n_scales": len(scales),
            "n_lower": sum(lower), "frac_lower": _frac(lower)}


# ---- findings ------------------------------------------------------------------------------

def f1(ctx: Ctx) -> dict:
    is_off = lambda c: c.get("model.qk_layernorm") == "none"
    offs, note = _one_factor(ctx, {"model.qk_layernorm"}, is_off)
    ons = [ctx.reference] if not is_off(ctx.configs.get(ctx.reference, {})) else ctx.variants_where(lambda c: not is_off(c))
    if not offs or not ons:
        return no_data(1, "needs a variant with model.qk_layernorm = none and one with qk-layernorm on")
    off, on = offs[0], ons[0]
    lr = max(ctx.lrs(off) & ctx.lrs(on), default=None)
    if lr is None:
        return no_data(1, f"variants {off} and {on} share no LR")
    lo_off = ctx.per_scale(off, "max_attn_logit", lr)
    lo_on = ctx.per_scale(on, "max_attn_logit", lr)
    common = ctx.ordered(set(lo_off) & set(lo_on))
    m: dict[str, Any] = {"variant_off": off, "variant_on": on, "lr": lr}
    ratio = None
    if common:
        s = common[-1]
        m.update(scale=s, max_logit_off=lo_off[s], max_logit_on=lo_on[s])
        ratio = lo_off[s] / lo_on[s] if lo_on[s] > 0 else math.inf
        m["logit_ratio"] = ratio
    cmp = _compare_sensitivity(ctx, on, off)
    m.update(sensitivity=cmp, lowest_diverging_lr_off=_lowest_diverging(ctx, off))
    if ratio is None or not cmp["n_scales"]:
        return no_data(1, "no max_attn_logit or sensitivity at a common scale", m)
    ok = ratio > LOGIT_RATIO_MIN and cmp["frac_lower"] > MAJORITY
    return claim(1, m, ok, note)


def _lowest_diverging(ctx: Ctx, variant: str) -> dict[str, float | None]:
    df = ctx.runs.filter(pl.col("variant") == variant)
    g = df.group_by("scale", "lr").agg(pl.col("failed").cast(pl.Float64).mean())
    out = {}
    for s in ctx.ordered(set(df["scale"].to_list())):
        lrs = g.filter((pl.col("scale") == s) & (pl.col("failed") >= 0.5))["lr"]
        out[s] = lrs.min() if len(lrs) else None
    return out


def f2(ctx: Ctx) -> dict:
    no_zl = lambda c: (c.get("loss.z_loss") or 0) == 0
    is_off = lambda c: no_zl(c) and (c.get("optim.weight_decay") or 0) == 0
    offs, note = _one_factor(ctx, {"loss.z_loss", "optim.weight_decay"}, is_off)
    ref_on = not no_zl(ctx.configs.get(ctx.reference, {}))
    ons = [ctx.reference] if ref_on else ctx.variants_where(lambda c: not no_zl(c))
    if not offs or not ons:
        return no_data(2, "needs a variant with loss.z_loss = 0 and optim.weight_decay = 0, and one with z-loss")
    off, on = offs[0], ons[0]
    lr = max(ctx.lrs(off) & ctx.lrs(on), default=None)
    z_off = ctx.per_scale(off, "logz_rms_final", lr)
    z_on = ctx.per_scale(on, "logz_rms_final", lr)
    scales = ctx.ordered(set(z_off) & set(z_on))
    m: dict[str, Any] = {"variant_off": off, "variant_on": on, "lr": lr, "scales": scales,
                         "rms_logz_off": [z_off[s] for s in scales], "rms_logz_on": [z_on[s] for s in scales]}
    decay_only = ctx.variants_where(lambda c: no_zl(c) and (c.get("optim.weight_decay") or 0) > 0)
    if decay_only and lr is not None:
        z_wd = ctx.per_scale(decay_only[0], "logz_rms_final", lr)
        m.update(variant_decay_only=decay_only[0], rms_logz_decay_only=[z_wd.get(s) for s in scales])
    if not scales:
        return no_data(2, "no finite logz_rms_final at the highest common LR (diverged runs, or summaries "
                          "written before logz_rms_final existed: retrain those)", m)
    # Drift is growth from where log Z started (~log(vocab) at init, not 0); runs without
    # a step-0 metrics row fall back to reading from 0.
    z_off0 = ctx.per_scale(off, "logz_rms_init", lr)
    m["rms_logz_init_off"] = [z_off0.get(s) for s in scales]
    drift = [z_off[s] - z_off0.get(s, 0.0) >= LOGZ_DRIFT for s in scales]
    held = [z_on[s] < LOGZ_SMALL for s in scales]
    flags = [a and b for a, b in zip(drift, held)]
    # The two halves are reported apart, so a run that shows the drift but not yet its
    # removal reads as such; the verdict still needs both.
    m.update(frac_scales_drift=_frac(drift), frac_scales_held_by_z_loss=_frac(held),
             frac_scales_drift_removed=_frac(flags))
    return claim(2, m, _frac(flags) > MAJORITY, note)


def _by_value(ctx: Ctx, key: str, variants: list[str]) -> dict[Any, str]:
    """config value -> first variant holding it."""
    out: dict[Any, str] = {}
    for v in variants:
        val = ctx.cfg(v, key)
        if val is not None and val != roles.VARIES:
            out.setdefault(val, v)
    return out


def f3(ctx: Ctx) -> dict:
    fam = roles.family(ctx.configs, ctx.reference, {"optim.warmup_steps"})
    by = _by_value(ctx, "optim.warmup_steps", fam)
    if len(by) < 2:
        return no_data(3, "needs variants that differ from the reference only in optim.warmup_steps")
    short, long_ = by[min(by)], by[max(by)]
    cmp = _compare_sensitivity(ctx, long_, short)
    m = {"warmup_short": min(by), "warmup_long": max(by), "variant_short": short, "variant_long": long_, **cmp}
    if not cmp["n_scales"]:
        return no_data(3, "no common scale with a sensitivity", m)
    gaps = [b - a for a, b in zip(cmp[f"sensitivity_{long_}"], cmp[f"sensitivity_{short}"])]
    m["gain_smallest_scale"], m["gain_largest_scale"] = gaps[0], gaps[-1]
    return claim(3, m, cmp["frac_lower"] > MAJORITY,
                 "larger gain at the largest scale" if gaps[-1] > gaps[0] else "gain not larger at the largest scale")


def f4(ctx: Ctx) -> dict:
    fam = roles.family(ctx.configs, ctx.reference, {"optim.independent_weight_decay", "optim.weight_decay"})
    by = _by_value(ctx, "optim.independent_weight_decay", fam)
    if True not in by or False not in by:
        return no_data(4, "needs an independent-decay and a coupled-decay variant that differ only in weight decay")
    cmp = _compare_sensitivity(ctx, by[True], by[False])
    m = {"variant_independent": by[True], "variant_coupled": by[False],
         "decay_independent": ctx.cfg(by[True], "optim.weight_decay"),
         "decay_coupled": ctx.cfg(by[False], "optim.weight_decay"), **cmp}
    if not cmp["n_scales"]:
        return no_data(4, "no common scale with a sensitivity", m)
    return claim(4, m, cmp["frac_lower"] > MAJORITY)


def _ladder(points: pl.DataFrame, fixed: str, varied: str) -> pl.DataFrame:
    """The points sharing the `fixed` dimension value that spans the most `varied` values."""
    best, best_n = pl.DataFrame(), 1
    for _, g in points.group_by(fixed, maintain_order=True):
        n = g[varied].n_unique()
        if n > best_n:
            best, best_n = g, n
    return best


def f5(ctx: Ctx) -> dict:
    same = [v for v in ctx.configs if not roles.diff(ctx.configs[v], ctx.configs.get(ctx.reference, {}))]
    shapes = roles.scale_shapes(ctx.runs.filter(pl.col("variant").is_in(same))) if same else pl.DataFrame()
    if shapes.is_empty() or ctx.sens.is_empty():
        return no_data(5, "needs model.d_model / model.n_layers per scale and sensitivities")
    pts = shapes.join(ctx.sens.select("scale", "variant", "sensitivity", "non_embedding_params"),
                      on=["scale", "variant"]).drop_nulls(["sensitivity", "non_embedding_params"])
    width = _ladder(pts, "model.n_layers", "model.d_model")
    depth = _ladder(pts, "model.d_model", "model.n_layers")
    m: dict[str, Any] = {}
    for name, lad in (("width", width), ("depth", depth)):
        if lad.height >= 2:
            coef, _ = polyfit(np.log10(lad["non_embedding_params"].to_numpy()), lad["sensitivity"].to_numpy(), 1)
            m[f"{name}_scales"] = lad.sort("non_embedding_params")["scale"].to_list()
            m[f"{name}_slope"] = float(coef[0])
    if "width_slope" not in m or "depth_slope" not in m:
        return no_data(5, "needs a width ladder (fixed n_layers) and a depth ladder (fixed d_model) of >= 2 scales", m)
    return claim(5, m, m["depth_slope"] > m["width_slope"], "slopes are sensitivity per decade of parameters")


def _log_range(values: list[float]) -> float | None:
    v = [x for x in values if x and x > 0]
    return math.log10(max(v)) - math.log10(min(v)) if len(v) >= 2 else None


def f6(ctx: Ctx) -> dict:
    fam = roles.family(ctx.configs, ctx.reference, {"model.parametrization", "model.mup_base_width"})
    std = [v for v in fam if ctx.cfg(v, "model.parametrization", "standard") == "standard"]
    mup = [v for v in fam if ctx.cfg(v, "model.parametrization", "standard") != "standard"]
    if not std or not mup:
        return no_data(6, "needs a standard and a muParam variant that differ only in parametrization")
    spread = {v: _log_range(list(ctx.by_scale(v, "best_lr_fit").values())) for v in [std[0], *mup]}
    mean_sens = {v: float(np.mean(list(ctx.by_scale(v).values()) or [np.nan])) for v in [std[0], *mup]}
    m = {"variant_standard": std[0], "variants_mup": mup, "best_lr_log10_range": spread,
         "mean_sensitivity": mean_sens,
         "best_lr_fit": {v: ctx.by_scale(v, "best_lr_fit") for v in [std[0], *mup]}}
    if spread[std[0]] is None or any(spread[v] is None for v in mup):
        return no_data(6, "needs a fitted optimal LR at >= 2 scales for each variant", m)
    ok = all(spread[v] < spread[std[0]] for v in mup)
    lower = [v for v in mup if mean_sens[v] < mean_sens[std[0]]]
    return claim(6, m, ok, f"mean sensitivity lower than standard for: {', '.join(lower) or 'none'} "
                           "(the paper: muParam does not lower it)")


def f7(ctx: Ctx) -> dict:
    knobs = {"train.steps", "train.batch_size", "optim.warmup_steps"}
    fam = [v for v in roles.family(ctx.configs, ctx.reference, knobs) if v != ctx.reference
           and roles.diff(ctx.configs[v], ctx.configs[ctx.reference]) & {"train.steps", "train.batch_size"}]
    if not fam:
        return no_data(7, "needs variants that change train.steps or train.batch_size from the reference")
    ref = ctx.by_scale(ctx.reference)
    m: dict[str, Any] = {"reference": ctx.reference, "comparisons": []}
    flags = []
    for v in fam:
        s = ctx.by_scale(v)
        for sc in ctx.ordered(set(s) & set(ref)):
            ratio = s[sc] / ref[sc] if ref[sc] > 0 else math.inf
            within = abs(s[sc] - ref[sc]) <= SENS_ABS_TOL or 1 / KNOB_FACTOR <= ratio <= KNOB_FACTOR
            flags.append(within)
            m["comparisons"].append({"variant": v, "scale": sc, "steps": ctx.cfg(v, "train.steps"),
                                     "batch_size": ctx.cfg(v, "train.batch_size"), "sensitivity": s[sc],
                                     "sensitivity_reference": ref[sc], "ratio": ratio, "within": within})
    m["frac_within"] = _frac(flags)
    if not flags:
        return no_data(7, "no common scale with a sensitivity", m)
    return claim(7, m, m["frac_within"] >= KNOB_AGREE_FRAC)


def f8(ctx: Ctx) -> dict:
    fc = ctx.forecast
    if not fc or fc.get("status") != "ok" or fc.get("backtest_status") != "ok":
        return no_data(8, f"forecast status: {fc.get('status', 'missing')}, backtest: {fc.get('backtest_status')}",
                       {"notes": fc.get("notes", [])})
    bt = fc.get("backtest", [])
    m = {"held_out_params": fc.get("held_out_params"), "threshold": fc.get("threshold"), "score": fc.get("score"),
         "n_scored": fc.get("n_scored"),
         "n_predicted_diverged": sum(bool(e["predicted_diverged"]) for e in bt),
         "n_observed_diverged": sum(bool(e["observed_diverged"]) for e in bt),
         "n_diverged_predicted_right": sum(bool(e["observed_diverged"] and e["predicted_diverged"]) for e in bt),
         "per_lr": [{k: e[k] for k in ("variant", "lr", "predicted", "observed_max_logit", "predicted_diverged",
                                       "observed_diverged")} for e in bt],
         "observed_threshold": fc.get("observed_threshold")}
    if m["score"] is None:
        return no_data(8, "no LR could be scored at the held-out size", m)
    if m["n_observed_diverged"] == 0:
        return no_data(8, "no run diverged at the held-out size, so there is no divergence to forecast", m)
    ok = m["score"] >= FORECAST_MIN_SCORE and m["n_diverged_predicted_right"] > 0
    return claim(8, m, ok)


def f9(ctx: Ctx) -> dict:
    fam = ctx.variants_where(lambda c: (c.get("model.qk_kappa") or 0) > 0)
    by = _by_value(ctx, "model.qk_kappa", fam)
    if len(by) < 2:
        return no_data(9, "needs variants with at least two values of model.qk_kappa > 0")
    kappas = sorted(by)
    loss = {k: ctx.by_scale(by[k], "best_loss") for k in kappas}
    scales = ctx.ordered(set.intersection(*(set(v) for v in loss.values())))
    m: dict[str, Any] = {"kappas": kappas, "variants": [by[k] for k in kappas], "scales": scales,
                         "best_loss": {s: [loss[k][s] for k in kappas] for s in scales}}
    logit = {k: ctx.per_scale(by[k], "max_attn_logit", stable_only=True) for k in kappas}
    m["max_logit_over_kappa"] = {str(k): (float(np.median(list(logit[k].values()))) / k if logit[k] else None)
                                 for k in kappas}
    if ctx.reference not in fam:
        ref = ctx.by_scale(ctx.reference, "best_loss")
        m["best_loss_reference"] = [ref.get(s) for s in scales]
    if not scales:
        return no_data(9, "no scale with a best loss for every kappa", m)
    rhos = [float(scipy.stats.spearmanr(kappas, m["best_loss"][s]).statistic) for s in scales]
    m["spearman_rho"] = rhos
    flags = [rank_corr_at_least(r, KAPPA_RHO_MIN) for r in rhos if math.isfinite(r)]
    return claim(9, m, _frac(flags) > MAJORITY if flags else None,
                 "a no-attention / no-MLP baseline is not part of this check")


def rank_corr_at_least(rho: float, minimum: float) -> bool:
    """rho >= minimum for a Spearman rho. Over n points rho is a ratio of integers, so float
    noise is rounded off: an exact 0.8 (4 kappas, one adjacent swap) is not 0.7999999999999999."""
    return round(rho, 9) >= minimum


def f10(ctx: Ctx) -> dict:
    ref = ctx.reference
    m: dict[str, Any] = {"variant": ref}
    checks: dict[str, bool] = {}
    # (i) grad RMS falls with size: slope of the per-LR power-law fits of the reference
    f = ctx.fits.filter((pl.col("kind") == "grad_rms") & (pl.col("variant") == ref)
                        & pl.col("coef").is_not_null()) if not ctx.fits.is_empty() else pl.DataFrame()
    if f.height:
        per_lr = f.unique("lr", keep="first", maintain_order=True)
        slopes = [c[0] for c in per_lr["coef"].to_list()]
        m["grad_rms_size_slope_per_lr"] = dict(zip(map(str, per_lr["lr"].to_list()), slopes))
        checks["falls_with_size"] = _frac([s < 0 for s in slopes]) > MAJORITY
        cross = per_lr["predicted_crossing_params"].drop_nulls()
        m["smallest_predicted_size_reaching_eps"] = cross.min() if len(cross) else None
    # (ii) grad RMS falls with LR, per scale (stable runs)
    if "grad_rms_final" in ctx.runs.columns:
        df = ctx.runs.filter((pl.col("variant") == ref) & ~pl.col("failed")).with_columns(
            g=col(ctx.runs, "grad_rms_final")).drop_nulls("g")
        rhos = {}
        for s in ctx.ordered(set(df["scale"].to_list())):
            d = df.filter(pl.col("scale") == s)
            if d["lr"].n_unique() >= 2:
                rhos[s] = float(scipy.stats.spearmanr(d["lr"].to_numpy(), d["g"].to_numpy()).statistic)
        if rhos:
            m["grad_rms_lr_spearman"] = rhos
            checks["falls_with_lr"] = _frac([r < 0 for r in rhos.values() if math.isfinite(r)] or [False]) > MAJORITY
        eps = ctx.cfg(ref, "optim.eps")
        if eps and len(df):
            m["min_grad_rms_over_eps"] = float(df["g"].min()) / eps
    # (iii) update RMS collapses at a large epsilon (variants differing only in optim.eps)
    by = _by_value(ctx, "optim.eps", roles.family(ctx.configs, ref, {"optim.eps"}))
    if len(by) >= 2:
        small, large = by[min(by)], by[max(by)]
        lrs = sorted(ctx.lrs(small) & ctx.lrs(large))
        u_s = {lr: ctx.per_scale(small, "update_rms_final", lr, stable_only=True) for lr in lrs}
        u_l = {lr: ctx.per_scale(large, "update_rms_final", lr, stable_only=True) for lr in lrs}
        scales = ctx.ordered(set().union(*(set(u_s[lr]) & set(u_l[lr]) for lr in lrs)) if lrs else set())
        if scales:
            s = scales[-1]
            ratios = [u_l[lr][s] / u_s[lr][s] for lr in lrs if s in u_s[lr] and s in u_l[lr] and u_s[lr][s] > 0]
            m.update(eps_small=min(by), eps_large=max(by), scale=s, update_rms_ratio_per_lr=ratios)
            if ratios:
                m["update_rms_ratio_median"] = float(np.median(ratios))
                checks["update_collapse_at_large_eps"] = m["update_rms_ratio_median"] < UPDATE_COLLAPSE
    m["checks"] = checks
    if not checks:
        return no_data(10, "needs grad_rms_final / update_rms_final at >= 2 sizes or LRs", m)
    missing = {"falls_with_size", "falls_with_lr", "update_collapse_at_large_eps"} - set(checks)
    return claim(10, m, all(checks.values()), f"not checked: {', '.join(sorted(missing))}" if missing else "")


def f11(ctx: Ctx) -> dict:
    ref = ctx.reference
    others = [v for v in ctx.configs if v != ref and roles.diff(ctx.configs[v], ctx.configs[ref]) & MITIGATION_KEYS]
    note = ""
    if not others:  # no variant turns a mitigation off: compare with whatever the study has
        others = [v for v in ctx.configs if v != ref]
        note = "no variant removes a mitigation; compared with every other variant"
    refs = ctx.by_scale(ref)
    if not others or not refs:
        return no_data(11, "needs the reference and at least one other variant with sensitivities")
    m: dict[str, Any] = {"reference": ref, "per_variant": {}}
    lowest_everywhere, each_worse_somewhere = [], []
    for v in others:
        s = ctx.by_scale(v)
        scales = ctx.ordered(set(s) & set(refs))
        if not scales:
            continue
        lowest_everywhere += [refs[sc] <= s[sc] + SENS_TIE_TOL for sc in scales]
        worse = [s[sc] > refs[sc] + SENS_TIE_TOL for sc in scales]
        each_worse_somewhere.append(any(worse))
        m["per_variant"][v] = {"scales": scales, "sensitivity": [s[sc] for sc in scales],
                               "sensitivity_reference": [refs[sc] for sc in scales], "worse_at": sum(worse)}
    if not lowest_everywhere:
        return no_data(11, "no scale shared by the reference and another variant", m)
    spread = ctx.runs.filter((pl.col("variant") == ref) & ~pl.col("failed")).group_by("scale", "lr").agg(
        pl.col("loss_capped").mean()).group_by("scale").agg(
        (pl.col("loss_capped").max() - pl.col("loss_capped").min()).alias("spread"))
    by_scale = dict(zip(spread["scale"], spread["spread"]))
    m["reference_loss_spread_over_lrs"] = {sc: by_scale[sc] for sc in ctx.ordered(set(by_scale))}  # stable order
    m["frac_reference_lowest"] = _frac(lowest_everywhere)
    m["frac_variants_worse_somewhere"] = _frac(each_worse_somewhere)
    return claim(11, m, all(lowest_everywhere) and all(each_worse_somewhere), note)


CHECKS: dict[int, Callable[[Ctx], dict]] = {1: f1, 2: f2, 3: f3, 4: f4, 5: f5, 6: f6, 7: f7, 8: f8, 9: f9,
                                           10: f10, 11: f11}


def claims(study: Any, runs: pl.DataFrame, sensitivity: pl.DataFrame, fits: pl.DataFrame | None,
           forecast: dict | None) -> list[dict[str, Any]]:
    """One claim per finding the study lists (study: a grid.Study or {name, findings, reference, options})."""
    ctx = Ctx(study, runs, sensitivity, fits, forecast)
    out = []
    for f in ctx.findings:
        check = CHECKS.get(int(f))
        if check is None:
            out.append(no_data(int(f), f"finding {f} is not one of the paper's 11 findings"))
        elif ctx.runs.is_empty():
            out.append(no_data(int(f), "no finished runs"))
        else:
            try:
                out.append(check(ctx))
            except Exception as e:  # one broken check must not hide the others' results
                out.append(no_data(int(f), f"check failed: {type(e).__name__}: {e}",
                                   {"traceback": traceback.format_exc(limit=3)}))
    return out


def write_claims(items: list[dict], path: Path, study: str = "") -> Path:
    return write_json({"study": study, "claims": items}, path)
