"""Finding 7: Steps and batch size (Sec. 3.2.5, App. E).

Ported unchanged from the single claims module into the findings registry; its check is
still the pre-registry decision rule (see `rule`).
"""
from __future__ import annotations

import math
from typing import Any

import polars as pl
from .. import roles
from .base import (Ctx, Finding, Threshold, by_value, compare_sensitivity, frac, from_bool, not_run, one_factor,
                   register, result)

KNOB_FACTOR = 2.0
SENS_ABS_TOL = 0.05
KNOB_AGREE_FRAC = 0.75


def check(ctx: Ctx) -> dict:
    knobs = {"train.steps", "train.batch_size", "optim.warmup_steps"}
    fam = [v for v in roles.family(ctx.configs, ctx.reference, knobs) if v != ctx.reference
           and roles.diff(ctx.configs[v], ctx.configs[ctx.reference]) & {"train.steps", "train.batch_size"}]
    if not fam:
        return not_run(7, "needs variants that change train.steps or train.batch_size from the reference")
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
    m["frac_within"] = frac(flags)
    if not flags:
        return not_run(7, "no common scale with a sensitivity", m)
    return result(7, from_bool(m["frac_within"] >= KNOB_AGREE_FRAC), m)


FINDING = register(Finding(
    number=7,
    title='Steps and batch size',
    claim='Training for 2x more or fewer steps, or with a larger batch and fewer steps, does not change LR sensitivity much.',
    source='Sec. 3.2.5, App. E',
    quantity="ratio of LR sensitivity to the reference's, per knob variant and scale",
    rule="pre-registry rule: " + '2x more or fewer steps, or a larger batch with fewer steps, do not change LR sensitivity.',
    figures=('lr_vs_loss', 'sensitivity_vs_size'),
    check=check,
))
