"""Finding 1: Attention-logit growth (Sec. 3.1.1, Fig. 1).

Ported unchanged from the single claims module into the findings registry; its check is
still the pre-registry decision rule (see `rule`).
"""
from __future__ import annotations

import math
from typing import Any

import polars as pl
from ..sensitivity import col
from .base import (Ctx, Finding, Threshold, by_value, compare_sensitivity, frac, from_bool, not_run, one_factor,
                   register, result)

LOGIT_RATIO_MIN = 10.0
MAJORITY = 0.5


def _lowest_diverging(ctx: Ctx, variant: str) -> dict[str, float | None]:
    df = ctx.runs.filter(pl.col("variant") == variant)
    g = df.group_by("scale", "lr").agg(pl.col("failed").cast(pl.Float64).mean())
    out = {}
    for s in ctx.ordered(set(df["scale"].to_list())):
        lrs = g.filter((pl.col("scale") == s) & (pl.col("failed") >= 0.5))["lr"]
        out[s] = lrs.min() if len(lrs) else None
    return out


def check(ctx: Ctx) -> dict:
    is_off = lambda c: c.get("model.qk_layernorm") == "none"
    offs, note = one_factor(ctx, {"model.qk_layernorm"}, is_off)
    ons = [ctx.reference] if not is_off(ctx.configs.get(ctx.reference, {})) else ctx.variants_where(lambda c: not is_off(c))
    if not offs or not ons:
        return not_run(1, "needs a variant with model.qk_layernorm = none and one with qk-layernorm on")
    off, on = offs[0], ons[0]
    lr = max(ctx.lrs(off) & ctx.lrs(on), default=None)
    if lr is None:
        return not_run(1, f"variants {off} and {on} share no LR")
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
    cmp = compare_sensitivity(ctx, on, off)
    m.update(sensitivity=cmp, lowest_diverging_lr_off=_lowest_diverging(ctx, off))
    if ratio is None or not cmp["n_scales"]:
        return not_run(1, "no max_attn_logit or sensitivity at a common scale", m)
    ok = ratio > LOGIT_RATIO_MIN and cmp["frac_lower"] > MAJORITY
    return result(1, from_bool(ok), m, note)


FINDING = register(Finding(
    number=1,
    title='Attention-logit growth',
    claim='Without qk-layernorm, attention logits grow with LR and scale and runs diverge, and the LR at which models diverge becomes smaller with increasing model size; qk-layernorm removes the growth and gives considerably lower LR sensitivity.',
    source='Sec. 3.1.1, Fig. 1',
    quantity='max attention logit at the highest LR (largest scale) and LR sensitivity per scale, qk-layernorm off vs on',
    rule="pre-registry rule: " + 'Without qk-layernorm attention logits grow with LR and scale and runs diverge; qk-layernorm removes this and lowers LR sensitivity.',
    figures=('lr_vs_loss', 'sensitivity_vs_size', 'attn_logit_vs_step', 'attn_logit_vs_lr'),
    check=check,
))
