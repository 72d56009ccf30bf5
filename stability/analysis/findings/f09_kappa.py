"""Finding 9: Logit-threshold transplant (kappa) (Sec. 3.3, Fig. 10).

Ported unchanged from the single claims module into the findings registry; its check is
still the pre-registry decision rule (see `rule`).
"""
from __future__ import annotations

import math
import numpy as np
import scipy.stats
from typing import Any

import polars as pl

from .base import (Ctx, Finding, Threshold, by_value, compare_sensitivity, frac, from_bool, not_run, one_factor,
                   register, result)

KAPPA_RHO_MIN = 0.8
MAJORITY = 0.5


def rank_corr_at_least(rho: float, minimum: float) -> bool:
    """rho >= minimum for a Spearman rho. Over n points rho is a ratio of integers, so float
    noise is rounded off: an exact 0.8 (4 kappas, one adjacent swap) is not 0.7999999999999999."""
    return round(rho, 9) >= minimum


def check(ctx: Ctx) -> dict:
    fam = ctx.variants_where(lambda c: (c.get("model.qk_kappa") or 0) > 0)
    by = by_value(ctx, "model.qk_kappa", fam)
    if len(by) < 2:
        return not_run(9, "needs variants with at least two values of model.qk_kappa > 0")
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
        return not_run(9, "no scale with a best loss for every kappa", m)
    rhos = [float(scipy.stats.spearmanr(kappas, m["best_loss"][s]).statistic) for s in scales]
    m["spearman_rho"] = rhos
    flags = [rank_corr_at_least(r, KAPPA_RHO_MIN) for r in rhos if math.isfinite(r)]
    return result(9, from_bool(frac(flags) > MAJORITY if flags else None), m,
                 "a no-attention / no-MLP baseline is not part of this check")


FINDING = register(Finding(
    number=9,
    title='Logit-threshold transplant (kappa)',
    claim='Pinning the max attention logit near kappa (the qk transplant) degrades loss from about kappa = 1e3, and by kappa = 1e4 the loss exceeds that of a zero-layer bigram model.',
    source='Sec. 3.3, Fig. 10',
    quantity='Spearman correlation of best loss with kappa, per scale',
    rule="pre-registry rule: " + 'Pinning logits near kappa with the qk transplant degrades loss as kappa grows (from about 1e3).',
    figures=('kappa',),
    check=check,
))
