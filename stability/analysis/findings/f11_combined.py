"""Finding 11: Combined mitigations (Abstract and Sec. 1).

Ported unchanged from the single claims module into the findings registry; its check is
still the pre-registry decision rule (see `rule`).
"""
from __future__ import annotations


from typing import Any

import polars as pl
from .. import roles
from ..sensitivity import col
from .base import (Ctx, Finding, Threshold, by_value, compare_sensitivity, frac, from_bool, not_run, one_factor,
                   register, result)

SENS_TIE_TOL = 0.01
MITIGATION_KEYS = frozenset({"model.qk_layernorm", "loss.z_loss", "optim.weight_decay",
                             "optim.independent_weight_decay", "optim.warmup_steps"})


def check(ctx: Ctx) -> dict:
    ref = ctx.reference
    others = [v for v in ctx.configs if v != ref and roles.diff(ctx.configs[v], ctx.configs[ref]) & MITIGATION_KEYS]
    note = ""
    if not others:  # no variant turns a mitigation off: compare with whatever the study has
        others = [v for v in ctx.configs if v != ref]
        note = "no variant removes a mitigation; compared with every other variant"
    refs = ctx.by_scale(ref)
    if not others or not refs:
        return not_run(11, "needs the reference and at least one other variant with sensitivities")
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
        return not_run(11, "no scale shared by the reference and another variant", m)
    spread = ctx.runs.filter((pl.col("variant") == ref) & ~pl.col("failed")).group_by("scale", "lr").agg(
        pl.col("loss_capped").mean()).group_by("scale").agg(
        (pl.col("loss_capped").max() - pl.col("loss_capped").min()).alias("spread"))
    by_scale = dict(zip(spread["scale"], spread["spread"]))
    m["reference_loss_spread_over_lrs"] = {sc: by_scale[sc] for sc in ctx.ordered(set(by_scale))}  # stable order
    m["frac_reference_lowest"] = frac(lowest_everywhere)
    m["frac_variants_worse_somewhere"] = frac(each_worse_somewhere)
    return result(11, from_bool(all(lowest_everywhere) and all(each_worse_somewhere)), m, note)


FINDING = register(Finding(
    number=11,
    title='Combined mitigations',
    claim='Combining the studied techniques trains small models that achieve similar losses across orders of magnitude of learning rate variation; with qk-layernorm and z-loss in place the other techniques usually have little impact on the range of LRs that train but do affect the sensitivity within it.',
    source='Abstract and Sec. 1',
    quantity='LR sensitivity of the reference (all mitigations) vs every other variant, per scale',
    rule="pre-registry rule: " + 'With all mitigations on, loss is nearly flat across LRs at every scale; removing any one brings back failures.',
    figures=('lr_vs_loss', 'sensitivity_vs_size'),
    check=check,
))
