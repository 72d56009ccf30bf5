"""Finding 1: Attention-logit growth (Sec. 3.1.1, Fig. 1).

Three sub-checks, combined by verdict.combine (rule and thresholds on FINDING):
  logit_growth                 at LR* (the highest LR at which the qk-layernorm variant trains
                               at the largest scale), over the (scale, seed) pairs where qk-
                               layernorm trained and the variant without it failed: the 95%
                               t-interval of log10(max logit without / with) must lie above
                               LOG_RATIO_MIN decades.
  lower_sensitivity            Ctx.paired_effect(on, off) over sensitivity_trainable (nats),
                               directional with the no-effect band SENS_BAND.
  failure_lr_falls_with_scale  the lowest LR at which most seeds without qk-layernorm failed,
                               per size: non-increasing and strictly lower at the largest size
                               than at the smallest.
"""
from __future__ import annotations

import math
from typing import Any

import polars as pl

from ..verdict import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Interval, combine, directional, subcheck,
                       t_interval)
from .base import Ctx, Finding, Threshold, compare_sensitivity, not_run, one_factor, register, result

LOG_RATIO_MIN = 1.0  # decades of max attention logit, without over with qk-layernorm
SENS_BAND = 0.1  # nats of LR sensitivity: the seed-to-seed spread of one config
MAJORITY = 0.5  # an LR fails at a size when at least this fraction of its seeds failed


def failed_at(ctx: Ctx, variant: str) -> dict[tuple[str, float], bool]:
    """(scale, lr) -> did at least MAJORITY of the variant's seeds fail there."""
    g = (ctx.runs.filter(pl.col("variant") == variant).group_by("scale", "lr")
         .agg(pl.col("failed").cast(pl.Float64).mean()))
    return {(s, lr): f >= MAJORITY for s, lr, f in g.select("scale", "lr", "failed").iter_rows()}


def lowest_failing_lr(ctx: Ctx, variant: str) -> dict[str, float | None]:
    """scale -> the lowest LR that failed (None: no LR of the grid failed), in size order."""
    fails = failed_at(ctx, variant)
    scales = ctx.ordered({s for s, _ in fails})
    return {s: min((lr for (sc, lr), f in fails.items() if sc == s and f), default=None) for s in scales}


def failure_lr_trend(lowest: dict[str, float | None]) -> dict:
    """Sub-check: the lowest failing LR non-increasing with size, strictly lower at the largest.

    A size with no failing LR in the grid counts as failing above the grid (+inf). A flat or
    up-and-down sequence is inconclusive (a change below one grid step, or one-seed noise);
    higher at the largest size than at the smallest is the opposite trend.
    """
    if len(lowest) < 2:
        return subcheck(INCONCLUSIVE, note="a trend with size needs at least 2 sizes", lowest_failing_lr=lowest)
    if all(v is None for v in lowest.values()):
        return subcheck(INCONCLUSIVE, note="no LR of the grid failed at any size", lowest_failing_lr=lowest)
    vals = [math.inf if v is None else v for v in lowest.values()]
    non_increasing = all(a >= b for a, b in zip(vals, vals[1:]))
    if non_increasing and vals[-1] < vals[0]:
        outcome, note = REPRODUCED, "non-increasing with size, lower at the largest size"
    elif vals[-1] > vals[0]:
        outcome, note = NOT_REPRODUCED, "higher at the largest size than at the smallest"
    else:
        outcome, note = INCONCLUSIVE, ("the same at the largest and smallest size" if vals[-1] == vals[0]
                                       else "rises between some neighbouring sizes")
    return subcheck(outcome, note=note, lowest_failing_lr=lowest)


def _max_logits(ctx: Ctx, variant: str, lr: float) -> pl.DataFrame:
    return (ctx.runs.filter((pl.col("variant") == variant) & (pl.col("lr") == lr))
            .select("scale", "seed", "failed", logit=pl.col("max_attn_logit").cast(pl.Float64)))


def logit_growth(ctx: Ctx, off: str, on: str, lr: float | None) -> tuple[dict, Interval | None, list[dict]]:
    """Sub-check: log10 max-logit ratio off/on at lr over pairs where on trained and off failed."""
    if lr is None:
        return subcheck(INCONCLUSIVE, note="qk-layernorm trained at no LR at the largest scale"), None, []
    if "max_attn_logit" not in ctx.runs.columns:
        return subcheck(INCONCLUSIVE, note="no max_attn_logit column"), None, []
    j = _max_logits(ctx, off, lr).join(_max_logits(ctx, on, lr), on=["scale", "seed"], suffix="_on")
    order = {s: i for i, s in enumerate(ctx.scale_order)}
    pairs = []
    for r in sorted(j.iter_rows(named=True), key=lambda r: (order.get(r["scale"], 1 << 30), r["seed"])):
        a, b = r["logit"], r["logit_on"]
        ratio = math.log10(a / b) if a and b and a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b) else None
        pairs.append({"scale": r["scale"], "seed": r["seed"], "max_logit_off": a, "max_logit_on": b,
                      "off_failed": r["failed"], "on_failed": r["failed_on"], "log10_ratio": ratio})
    used = [p for p in pairs if p["off_failed"] and not p["on_failed"] and p["log10_ratio"] is not None]
    iv = t_interval(p["log10_ratio"] for p in used)
    if not used:
        return subcheck(INCONCLUSIVE, note=f"at LR {lr:g} no run without qk-layernorm failed where qk-layernorm "
                        "trained", pairs=pairs), None, pairs
    above = Interval(iv.estimate - LOG_RATIO_MIN, iv.lo - LOG_RATIO_MIN, iv.hi - LOG_RATIO_MIN, iv.n)
    note = f"LR {lr:g}: {iv.n} (scale, seed) pair(s) where qk-layernorm trained and the variant without it failed"
    return subcheck(directional(above), iv, note, lr=lr, pairs=pairs), iv, pairs


def lower_sensitivity(ctx: Ctx, off: str, on: str) -> tuple[dict, Interval]:
    """Sub-check: qk-layernorm's sensitivity over trainable LRs lower, paired by (scale, seed)."""
    if ctx.seeds.is_empty():
        return subcheck(INCONCLUSIVE, note="no per-seed sensitivity"), t_interval([])
    # A sensitivity is 0 by construction with one trainable LR, or when the variant failed at
    # every LR (loss_star = loss_0): such (scale, seed) pairs compare nothing.
    scales = ctx.seeds.filter(pl.col("n_lrs_trainable") >= 2)["scale"].unique().to_list()
    trained = set(ctx.runs.filter(~pl.col("failed")).select("variant", "scale", "seed").iter_rows())
    pairs = [p for p in ctx.paired(on, off, "sensitivity_trainable", scales)
             if (on, p["scale"], p["seed"]) in trained and (off, p["scale"], p["seed"]) in trained]
    iv = t_interval(p["diff"] for p in pairs)
    per_scale = {s: [p["diff"] for p in pairs if p["scale"] == s] for s in ctx.ordered({p["scale"] for p in pairs})}
    note = ("sensitivity over trainable LRs, without minus with qk-layernorm (nats)" if pairs
            else "no (scale, seed) where both variants trained at some LR, with at least 2 LRs that train")
    return subcheck(directional(iv, SENS_BAND), iv, note, band=SENS_BAND, diff_per_scale=per_scale), iv


def check(ctx: Ctx) -> dict:
    is_off = lambda c: c.get("model.qk_layernorm") == "none"
    offs, note = one_factor(ctx, {"model.qk_layernorm"}, is_off)
    ons = [ctx.reference] if not is_off(ctx.configs.get(ctx.reference, {})) else ctx.variants_where(lambda c: not is_off(c))
    if not offs or not ons:
        return not_run(1, "needs a variant with model.qk_layernorm = none and one with qk-layernorm on")
    off, on = offs[0], ons[0]
    common_lrs = sorted(ctx.lrs(off) & ctx.lrs(on))
    if not common_lrs:
        return not_run(1, f"variants {off} and {on} share no LR")
    scales = ctx.ordered(set(ctx.runs.filter(pl.col("variant") == off)["scale"].to_list())
                         & set(ctx.runs.filter(pl.col("variant") == on)["scale"].to_list()))
    largest = scales[-1]
    on_fails = failed_at(ctx, on)
    lr_star = max((lr for lr in common_lrs if on_fails.get((largest, lr)) is False), default=None)
    m: dict[str, Any] = {"variant_off": off, "variant_on": on, "lr": lr_star, "scale": largest}
    if lr_star is not None:
        lo_off, lo_on = ctx.per_scale(off, "max_attn_logit", lr_star), ctx.per_scale(on, "max_attn_logit", lr_star)
        if largest in lo_off and largest in lo_on:
            m.update(max_logit_off=lo_off[largest], max_logit_on=lo_on[largest],
                     logit_ratio=lo_off[largest] / lo_on[largest] if lo_on[largest] > 0 else math.inf)
    growth, growth_iv, _ = logit_growth(ctx, off, on, lr_star)
    sens, _ = lower_sensitivity(ctx, off, on)
    lowest = lowest_failing_lr(ctx, off)
    trend = failure_lr_trend(lowest)
    m.update(sensitivity=compare_sensitivity(ctx, on, off), lowest_diverging_lr_off=lowest)
    subs = {"logit_growth": growth, "lower_sensitivity": sens, "failure_lr_falls_with_scale": trend}
    outcome = combine({k: v["outcome"] for k, v in subs.items()})
    note = "; ".join([note] * bool(note) + [f"{k}: {v['outcome']} ({v['note']})" for k, v in subs.items()])
    return result(1, outcome, m, note, subchecks=subs, effect=growth_iv,
                  effect_unit="decades: log10 max attention logit without over with qk-layernorm",
                  n_seeds=ctx.n_seeds(off, on))


FINDING = register(Finding(
    number=1,
    title='Attention-logit growth',
    claim='Without qk-layernorm, attention logits grow with LR and scale and runs diverge, and the LR at which models diverge becomes smaller with increasing model size; qk-layernorm removes the growth and gives considerably lower LR sensitivity.',
    source='Sec. 3.1.1, Fig. 1',
    quantity='max attention logit over training without and with qk-layernorm at LR* (decades of their ratio); '
             'LR sensitivity over the LRs that train (nats); the lowest failing LR without qk-layernorm per size',
    rule=('LR* is the highest LR at which the qk-layernorm variant trains at the largest scale. logit_growth: over '
          'the (scale, seed) pairs at LR* where qk-layernorm trained and the variant without it failed, the 95% '
          't-interval of log10(max logit without / with) lies above 1 decade (reproduced), below it (not '
          'reproduced), else inconclusive. lower_sensitivity: the paired (scale, seed) difference of sensitivity '
          'over trainable LRs, without minus with, is directional with a no-effect band of 0.1 nats (pairs where '
          'both variants trained at some LR, at scales with at least 2 trainable LRs). failure_lr_falls_with_scale: the lowest LR at which most seeds without '
          'qk-layernorm failed is non-increasing with size and strictly lower at the largest size than at the '
          'smallest (a size with no failing LR counts as failing above the grid); higher at the largest size is '
          'not reproduced; flat or up-and-down is inconclusive; fewer than 2 sizes is inconclusive. '
          'Outcome: verdict.combine of the three.'),
    figures=('lr_vs_loss', 'sensitivity_vs_size', 'attn_logit_vs_step', 'attn_logit_vs_lr'),
    check=check,
    thresholds={
        "log_ratio_min": Threshold(LOG_RATIO_MIN, "one decade: qk-layernorm bounds each logit by about "
                                   "sqrt(head_dim) times the q and k gains (4 at head_dim 16 and unit gains), so a "
                                   "factor 10 above it is growth, not the spread of trained runs; the paper's "
                                   "diverging runs pass 1e4 (Sec. 3.4)"),
        "sensitivity_band": Threshold(SENS_BAND, "two seeds of the same default config differ by about 0.1 nats of "
                                      "LR sensitivity (science review, Sec. 1); a paired effect inside +-0.1 cannot "
                                      "be told from seed noise"),
        "majority": Threshold(MAJORITY, "an LR fails at a size when at least half of its seeds failed, as in "
                              "fits.py's lowest_diverging_lr"),
    },
))
