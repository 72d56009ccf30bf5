"""Finding 3: Warm-up (Sec. 3.2.1, Fig. 5).

Ported unchanged from the single claims module into the findings registry; its check is
still the pre-registry decision rule (see `rule`).
"""
from __future__ import annotations




import polars as pl
from .. import roles
from .base import (Ctx, Finding, Threshold, by_value, compare_sensitivity, frac, from_bool, not_run, one_factor,
                   register, result)

MAJORITY = 0.5


def check(ctx: Ctx) -> dict:
    fam = roles.family(ctx.configs, ctx.reference, {"optim.warmup_steps"})
    by = by_value(ctx, "optim.warmup_steps", fam)
    if len(by) < 2:
        return not_run(3, "needs variants that differ from the reference only in optim.warmup_steps")
    short, long_ = by[min(by)], by[max(by)]
    cmp = compare_sensitivity(ctx, long_, short)
    m = {"warmup_short": min(by), "warmup_long": max(by), "variant_short": short, "variant_long": long_, **cmp}
    if not cmp["n_scales"]:
        return not_run(3, "no common scale with a sensitivity", m)
    gaps = [b - a for a, b in zip(cmp[f"sensitivity_{long_}"], cmp[f"sensitivity_{short}"])]
    m["gain_smallest_scale"], m["gain_largest_scale"] = gaps[0], gaps[-1]
    return result(3, from_bool(cmp["frac_lower"] > MAJORITY), m,
                 "larger gain at the largest scale" if gaps[-1] > gaps[0] else "gain not larger at the largest scale")


FINDING = register(Finding(
    number=3,
    title='Warm-up',
    claim='A longer warm-up period reduces LR sensitivity; this is most clear for the larger models.',
    source='Sec. 3.2.1, Fig. 5',
    quantity='LR sensitivity per scale, shortest vs longest warm-up',
    rule="pre-registry rule: " + 'Longer warm-up lowers LR sensitivity, mostly for larger models.',
    figures=('lr_vs_loss', 'sensitivity_vs_size'),
    check=check,
))
