"""Finding 10: AdamW epsilon (Sec. 3.4.2, Figs. 13-14).

Ported unchanged from the single claims module into the findings registry; its check is
still the pre-registry decision rule (see `rule`).
"""
from __future__ import annotations

import math
import numpy as np
import scipy.stats
from typing import Any

import polars as pl
from .. import roles
from ..sensitivity import col
from .base import (Ctx, Finding, Threshold, by_value, compare_sensitivity, frac, from_bool, not_run, one_factor,
                   register, result)

UPDATE_COLLAPSE = 0.5
MAJORITY = 0.5


def check(ctx: Ctx) -> dict:
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
        checks["falls_with_size"] = frac([s < 0 for s in slopes]) > MAJORITY
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
            checks["falls_with_lr"] = frac([r < 0 for r in rhos.values() if math.isfinite(r)] or [False]) > MAJORITY
        eps = ctx.cfg(ref, "optim.eps")
        if eps and len(df):
            m["min_grad_rms_over_eps"] = float(df["g"].min()) / eps
    # (iii) update RMS collapses at a large epsilon (variants differing only in optim.eps)
    by = by_value(ctx, "optim.eps", roles.family(ctx.configs, ref, {"optim.eps"}))
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
        return not_run(10, "needs grad_rms_final / update_rms_final at >= 2 sizes or LRs", m)
    missing = {"falls_with_size", "falls_with_lr", "update_collapse_at_large_eps"} - set(checks)
    return result(10, from_bool(all(checks.values())), m, f"not checked: {', '.join(sorted(missing))}" if missing else "")


FINDING = register(Finding(
    number=10,
    title='AdamW epsilon',
    claim='Gradient RMS falls with model size and with LR; at large scale it nears epsilon, the AdamW update shrinks and its RMS collapses, so layers stop learning.',
    source='Sec. 3.4.2, Figs. 13-14',
    quantity='grad RMS slope vs size and vs LR; update RMS at large vs small epsilon',
    rule="pre-registry rule: " + 'Gradient RMS falls with size and LR; near AdamW epsilon the update RMS collapses.',
    figures=('grad_rms_vs_size', 'update_rms'),
    check=check,
))
