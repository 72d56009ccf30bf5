"""Finding 6: muParam (Sec. 3.2.3, Fig. 7).

Ported unchanged from the single claims module into the findings registry; its check is
still the pre-registry decision rule (see `rule`).
"""
from __future__ import annotations

import math
import numpy as np


import polars as pl
from .. import roles
from .base import (Ctx, Finding, Threshold, by_value, compare_sensitivity, frac, from_bool, not_run, one_factor,
                   register, result)




def _log_range(values: list[float]) -> float | None:
    v = [x for x in values if x and x > 0]
    return math.log10(max(v)) - math.log10(min(v)) if len(v) >= 2 else None


def check(ctx: Ctx) -> dict:
    fam = roles.family(ctx.configs, ctx.reference, {"model.parametrization", "model.mup_base_width"})
    std = [v for v in fam if ctx.cfg(v, "model.parametrization", "standard") == "standard"]
    mup = [v for v in fam if ctx.cfg(v, "model.parametrization", "standard") != "standard"]
    if not std or not mup:
        return not_run(6, "needs a standard and a muParam variant that differ only in parametrization")
    spread = {v: _log_range(list(ctx.by_scale(v, "best_lr_fit").values())) for v in [std[0], *mup]}
    mean_sens = {v: float(np.mean(list(ctx.by_scale(v).values()) or [np.nan])) for v in [std[0], *mup]}
    m = {"variant_standard": std[0], "variants_mup": mup, "best_lr_log10_range": spread,
         "mean_sensitivity": mean_sens,
         "best_lr_fit": {v: ctx.by_scale(v, "best_lr_fit") for v in [std[0], *mup]}}
    if spread[std[0]] is None or any(spread[v] is None for v in mup):
        return not_run(6, "needs a fitted optimal LR at >= 2 scales for each variant", m)
    ok = all(spread[v] < spread[std[0]] for v in mup)
    lower = [v for v in mup if mean_sens[v] < mean_sens[std[0]]]
    return result(6, from_bool(ok), m, f"mean sensitivity lower than standard for: {', '.join(lower) or 'none'} "
                           "(the paper: muParam does not lower it)")


FINDING = register(Finding(
    number=6,
    title='muParam',
    claim='muParam keeps the optimal LR stable across width but does not lower LR sensitivity (and does not remove the need for qk-layernorm).',
    source='Sec. 3.2.3, Fig. 7',
    quantity='log10 range of the fitted optimal LR across scales, muParam vs standard',
    rule="pre-registry rule: " + 'muParam keeps the optimal LR stable across width but does not lower LR sensitivity.',
    figures=('lr_vs_loss', 'sensitivity_vs_size'),
    check=check,
))
