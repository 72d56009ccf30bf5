"""Finding 4: Independent weight decay (Sec. 3.2.2, Fig. 6).

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
    fam = roles.family(ctx.configs, ctx.reference, {"optim.independent_weight_decay", "optim.weight_decay"})
    by = by_value(ctx, "optim.independent_weight_decay", fam)
    if True not in by or False not in by:
        return not_run(4, "needs an independent-decay and a coupled-decay variant that differ only in weight decay")
    cmp = compare_sensitivity(ctx, by[True], by[False])
    m = {"variant_independent": by[True], "variant_coupled": by[False],
         "decay_independent": ctx.cfg(by[True], "optim.weight_decay"),
         "decay_coupled": ctx.cfg(by[False], "optim.weight_decay"), **cmp}
    if not cmp["n_scales"]:
        return not_run(4, "no common scale with a sensitivity", m)
    return result(4, from_bool(cmp["frac_lower"] > MAJORITY), m)


FINDING = register(Finding(
    number=4,
    title='Independent weight decay',
    claim='Parameterizing weight decay independently of learning rate reduces LR sensitivity.',
    source='Sec. 3.2.2, Fig. 6',
    quantity='LR sensitivity per scale, independent vs coupled weight decay',
    rule="pre-registry rule: " + 'Independent weight decay lowers LR sensitivity compared with coupled decay.',
    figures=('lr_vs_loss', 'sensitivity_vs_size'),
    check=check,
))
