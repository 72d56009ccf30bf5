"""Paired-seed comparisons of LR sensitivity shared by findings 3, 5, 6 and 7.

Every quantity here is `sensitivity_trainable` (nats: mean excess final loss over the LRs
where some run of the study trained at that scale; Wortsman et al. 2023, Sec. 2.2), per
(scale, variant, seed) from `Ctx.seeds`. A sensitivity over fewer than MIN_TRAINABLE_LRS
LRs is 0 by construction, so such a scale is left out rather than read as "no effect".
"""
from __future__ import annotations

import math
from typing import Any

import polars as pl

from ..verdict import Interval, t_interval
from .base import Ctx, Threshold

NO_EFFECT_SENS = Threshold(0.05, (
    "nats of LR sensitivity. Half the ~0.1-nat spread between two seeds of one configuration's "
    "sensitivity (science-audit section 1, measured before these checks): a difference below it "
    "cannot be told apart by comparing single runs, so it counts as no effect, and an interval "
    "inside +-0.05 reads as 'no change'."))
MIN_TRAINABLE_LRS = 2  # a spread over LRs needs two of them; with one it is 0 whatever the model does


def usable_scales(ctx: Ctx) -> list[str]:
    """Scales whose trainable LR set has at least MIN_TRAINABLE_LRS LRs (study-wide per scale)."""
    if ctx.seeds.is_empty():
        return []
    ok = ctx.seeds.group_by("scale").agg(pl.col("n_lrs_trainable").max()).filter(
        pl.col("n_lrs_trainable") >= MIN_TRAINABLE_LRS)
    return ctx.ordered(set(ok["scale"].to_list()))


def paired_gain(ctx: Ctx, better: str, worse: str) -> tuple[Interval, list[dict[str, Any]]]:
    """Ctx.paired_effect on the usable scales: t-interval over (scale, seed) pairs of
    worse - better sensitivity_trainable (nats; > 0 means `better` is lower)."""
    return ctx.paired_effect(better, worse, "sensitivity_trainable", usable_scales(ctx))


def per_scale(pairs: list[dict[str, Any]]) -> dict[str, dict]:
    """scale -> the t-interval (as a dict) of that scale's paired differences over seeds."""
    out: dict[str, list[float]] = {}
    for p in pairs:
        out.setdefault(p["scale"], []).append(p["diff"])
    return {s: t_interval(d).as_dict() for s, d in out.items()}


def per_seed(ctx: Ctx, variant: str, scales: list[str] | None = None) -> dict[int, dict[str, float]]:
    """seed -> {scale: sensitivity_trainable} of one variant (usable scales only)."""
    keep = set(usable_scales(ctx) if scales is None else scales) & set(usable_scales(ctx))
    rows = ctx.seeds.filter(pl.col("variant") == variant).drop_nulls("sensitivity_trainable") \
        if not ctx.seeds.is_empty() else pl.DataFrame()
    out: dict[int, dict[str, float]] = {}
    for r in rows.iter_rows(named=True):
        if r["scale"] in keep and math.isfinite(r["sensitivity_trainable"]):
            out.setdefault(int(r["seed"]), {})[r["scale"]] = r["sensitivity_trainable"]
    return out

