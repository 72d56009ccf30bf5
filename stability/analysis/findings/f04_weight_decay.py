"""Finding 4: Independent weight decay (Sec. 3.2.2, Fig. 6).

Independent decay shrinks weights by s_t * lambda per step; coupled (PyTorch AdamW default)
by s_t * eta * lambda, so its strength moves with the LR. The paper compares independent
lambda = 1e-4 with coupled lambda = 0.1 over 1e5 steps (lambda * T = 10 for independent) and,
for coupled decay only, "report[s] the minimum LR sensitivity over ranges [1e-4, 1e-1] and
[3e-4, 3e-1]": the coupled arm may take its window one grid step lower.

LR sensitivity (Sec. 2.2; sensitivity.py) per (scale, seed), over the LRs where at least one
run of the study trained:

    S(window) = mean over eta in window of [ loss_capped(eta) - min over window of loss_capped ]

With the study option `lr_window: k` (k < number of grid LRs), the independent arm reads the
top k LRs and the coupled arm the minimum of that and the k LRs one grid step lower, as the
paper; without it both read the whole grid.
"""
from __future__ import annotations

from typing import Any

import polars as pl

from .. import roles
from ..verdict import combine, directional, subcheck, t_interval
from .base import Ctx, Finding, Threshold, by_value, inconclusive, not_run, register, result

EFFECT_MIN = 0.0

THRESHOLDS = {
    "effect_min": Threshold(EFFECT_MIN, (
        "nats of LR sensitivity, coupled minus independent: the paper claims a direction, not a size, so "
        "the 95% paired-seed interval alone decides (lower, higher, or inconclusive when it straddles 0).")),
}

RULE = (
    "Pair the independent-decay and coupled-decay variants (they differ only in weight decay) by "
    "(scale, seed). Per pair: LR sensitivity over the LRs where some run of the study trained, the "
    "coupled arm taking the lower of its top window and the window one grid step lower when the "
    "study sets lr_window (the paper's protocol). Effect = coupled - independent (nats); its 95% "
    "t-interval above 0: independent lower (reproduced); below 0: independent higher (not "
    "reproduced); straddling 0: inconclusive. The same comparison with both arms on the same "
    "window is reported beside it, and per-scale differences in measured.")


def _windows(lrs: list[float], k: int | None) -> tuple[list[float], list[float] | None]:
    """(top window, window one grid step lower or None) of the sorted grid."""
    lrs = sorted(lrs)
    if not k or k >= len(lrs):
        return lrs, None
    return lrs[-k:], lrs[-k - 1:-1]


def _trained(ctx: Ctx) -> set[tuple[str, float]]:
    """(scale, lr) where at least one run of any variant or seed of the study trained."""
    ok = ctx.runs.filter(~pl.col("failed")).select("scale", "lr").unique()
    return set(zip(ok["scale"], ok["lr"]))


def _per_seed(ctx: Ctx, variant: str, window: list[float]) -> dict[tuple[str, int], float]:
    """(scale, seed) -> sensitivity (nats) of `variant` over the window's LRs that some run of the
    study trained at; scales with fewer than two such LRs have no sensitivity to compare."""
    ok = _trained(ctx)
    df = ctx.runs.filter((pl.col("variant") == variant) & pl.col("lr").is_in(window))
    out = {}
    for (scale, seed), g in df.sort("scale", "seed", "lr").group_by("scale", "seed", maintain_order=True):
        g = g.filter(pl.Series([(scale, lr) in ok for lr in g["lr"]], dtype=pl.Boolean))
        if g["lr"].n_unique() >= 2:
            out[(scale, seed)] = float((g["loss_capped"] - g["loss_capped"].min()).mean())
    return out


def _compare(ctx: Ctx, ind: dict, cou: dict) -> tuple[Any, list[dict]]:
    order = {s: i for i, s in enumerate(ctx.scale_order)}
    keys = sorted(set(ind) & set(cou), key=lambda k: (order.get(k[0], 1 << 30), k[0], k[1]))
    pairs = [{"scale": s, "seed": seed, "independent": ind[(s, seed)], "coupled": cou[(s, seed)],
              "diff": cou[(s, seed)] - ind[(s, seed)]} for s, seed in keys]
    return t_interval(p["diff"] for p in pairs), pairs


def check(ctx: Ctx) -> dict:
    fam = roles.family(ctx.configs, ctx.reference, {"optim.independent_weight_decay", "optim.weight_decay"})
    by = by_value(ctx, "optim.independent_weight_decay", fam)
    if True not in by or False not in by:
        return not_run(4, "needs an independent-decay and a coupled-decay variant that differ only in weight decay")
    ind, cou = by[True], by[False]
    k = ctx.options.get("lr_window")
    top, low = _windows(sorted(ctx.lrs(ind) & ctx.lrs(cou)), int(k) if k else None)
    s_ind, s_cou_top = _per_seed(ctx, ind, top), _per_seed(ctx, cou, top)
    s_cou = s_cou_top
    if low is not None:
        s_cou_low = _per_seed(ctx, cou, low)
        s_cou = {key: min(v, s_cou_low.get(key, v)) for key, v in s_cou_top.items()}
    iv, pairs = _compare(ctx, s_ind, s_cou)
    iv_same, _ = _compare(ctx, s_ind, s_cou_top)
    m: dict[str, Any] = {
        "variant_independent": ind, "variant_coupled": cou,
        "decay_independent": ctx.cfg(ind, "optim.weight_decay"), "decay_coupled": ctx.cfg(cou, "optim.weight_decay"),
        "lrs_independent": top, "lrs_coupled": [top] + ([low] if low else []), "pairs": pairs,
        "per_scale_diff": {s: t_interval(p["diff"] for p in pairs if p["scale"] == s).as_dict()
                           for s in ctx.ordered({p["scale"] for p in pairs})},
        "same_window_effect": iv_same.as_dict()}
    n_seeds = ctx.n_seeds(ind, cou)
    if not pairs:
        return inconclusive(4, "no (scale, seed) with a sensitivity in both arms over two or more LRs where "
                               "runs trained", m, n_seeds=n_seeds)
    lower = subcheck(directional(iv), iv, "coupled - independent sensitivity over (scale, seed) pairs, nats; "
                                          "above 0 = independent lower")
    return result(4, combine({"independent_lower": lower["outcome"]}), m,
                  "" if low else "the coupled arm reads the same LRs as the independent arm (no lr_window)",
                  subchecks={"independent_lower": lower}, effect=iv,
                  effect_unit="nats of LR sensitivity, coupled minus independent", n_seeds=n_seeds)


FINDING = register(Finding(
    number=4,
    title='Independent weight decay',
    claim=('"Parameterizing weight decay independently of learning rate reduces LR sensitivity" (independent '
           'lambda = 1e-4 against coupled lambda = 0.1; for coupled decay the minimum LR sensitivity over '
           '[1e-4, 1e-1] and [3e-4, 3e-1] is reported).'),
    source='Sec. 3.2.2, Fig. 6',
    quantity='LR sensitivity (nats) over the LRs that train, coupled minus independent decay, paired by (scale, seed)',
    rule=RULE,
    figures=('lr_vs_loss', 'sensitivity_vs_size'),
    check=check,
    thresholds=THRESHOLDS,
))
