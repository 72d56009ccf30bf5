"""Finding 6: muParam (Sec. 3.2.3, Fig. 7).

Per seed and width, the optimal LR is the vertex of a quadratic in log10 LR through the
final losses around the best grid LR (sensitivity.optimal_lr). Its drift across widths is
range = log10(max / min) of those optima (decades). Per seed the effect is
HALF * range(standard) - range(muParam) (decades; > 0 means muParam's optimum drifts at most
half as much), with a t-interval over seeds. An optimum at a grid edge is clipped, so the
range it enters is only a lower bound: see the rule for what that allows.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from .. import roles
from ..sensitivity import optimal_lr
from ..verdict import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Interval, at_most, combine, directional, subcheck,
                       t_interval)
from .base import Ctx, Finding, Threshold, inconclusive, not_run, register, result
from .paired_sens import NO_EFFECT_SENS, paired_gain, per_scale

HALF = Threshold(0.5, (
    "largest allowed ratio of muParam's optimum drift to standard's (the issue's rule, science-audit "
    "F6): 'keeps the optimal LR stable' must mean much less drift, not any reduction. Under standard "
    "parametrization with Adam the optimum moves as 1/width, 0.48 decades over a 3x width ladder; half "
    "of that is half a step of the half-decade LR grid."))


def _optima(ctx: Ctx, variant: str) -> dict[int, dict[str, dict[str, Any]]]:
    """seed -> scale -> {fit: fitted optimal LR, edge: the best grid LR is the grid's lowest or
    highest LR or the fit was clipped there}; (scale, seed) cells where every run failed are left out."""
    df = ctx.runs.filter(pl.col("variant") == variant)
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for (scale, seed), g in df.group_by("scale", "seed", maintain_order=True):
        g = g.sort("lr")
        if g["failed"].all():
            continue
        lrs = g["lr"].to_numpy()
        best, fit = optimal_lr(lrs, g["loss_capped"].to_numpy(), g["failed"].to_numpy())
        edge = bool(np.isclose(best, lrs.min()) or np.isclose(best, lrs.max())
                    or np.isclose(fit, lrs.min()) or np.isclose(fit, lrs.max()))
        out.setdefault(int(seed), {})[str(scale)] = {"fit": fit, "edge": edge}
    return out


def _range(cells: dict[str, dict[str, Any]], scales: list[str]) -> float:
    v = [cells[s]["fit"] for s in scales]
    return math.log10(max(v)) - math.log10(min(v))


def _stability(std: dict, mup: dict, variant: str) -> tuple[dict, dict, Interval]:
    """(sub-check record, measured, interval) for one muParam variant against standard."""
    diffs, per_seed, std_edge, mup_edge = [], {}, [], []
    for seed in sorted(set(std) & set(mup)):
        scales = sorted(set(std[seed]) & set(mup[seed]))
        if len(scales) < 2:
            continue
        r_std, r_mup = _range(std[seed], scales), _range(mup[seed], scales)
        diffs.append(HALF.value * r_std - r_mup)
        per_seed[seed] = {"range_standard": r_std, "range_mup": r_mup, "scales": scales}
        std_edge += [f"{s}/seed {seed}" for s in scales if std[seed][s]["edge"]]
        mup_edge += [f"{s}/seed {seed}" for s in scales if mup[seed][s]["edge"]]
    iv = t_interval(diffs)
    outcome = directional(iv)
    notes = [f"{HALF.value} x range(standard) - range({variant}) = {iv.estimate:+.3f} decades over {iv.n} seeds"
             if diffs else "no seed has a trained optimum at two or more widths in both variants"]
    # A clipped optimum understates its variant's range: a clipped muParam range cannot support
    # 'reproduced', a clipped standard range cannot support 'not reproduced' (nor, by the issue's
    # rule that the grid must bracket standard's optimum, 'reproduced').
    if std_edge and outcome in (REPRODUCED, NOT_REPRODUCED):
        notes.append(f"standard's optimum sits at a grid edge ({', '.join(std_edge)}): its range is a lower "
                     f"bound, so {outcome!r} cannot be read off; extend the LR grid")
        outcome = INCONCLUSIVE
    elif mup_edge and outcome == REPRODUCED:
        notes.append(f"{variant}'s optimum sits at a grid edge ({', '.join(mup_edge)}): its range is a lower "
                     "bound, so 'reproduced' cannot be read off; extend the LR grid")
        outcome = INCONCLUSIVE
    if iv.n < 2:
        notes.append("needs >= 2 seeds with optima at >= 2 widths for an interval")
    m = {"per_seed": per_seed, "standard_at_grid_edge": std_edge, "mup_at_grid_edge": mup_edge}
    return subcheck(outcome, iv, "; ".join(notes)), m, iv


def check(ctx: Ctx) -> dict:
    fam = roles.family(ctx.configs, ctx.reference, {"model.parametrization", "model.mup_base_width"})
    std = [v for v in fam if ctx.cfg(v, "model.parametrization", "standard") == "standard"]
    mups = [v for v in fam if ctx.cfg(v, "model.parametrization", "standard") != "standard"]
    if not std or not mups:
        return not_run(6, "needs a standard and a muParam variant that differ only in parametrization")
    std = std[0]
    if ctx.runs["lr"].n_unique() < 3:
        return inconclusive(6, "an optimal LR needs >= 3 LRs in the grid", n_seeds=ctx.n_seeds())
    opt = {v: _optima(ctx, v) for v in [std, *mups]}
    m: dict[str, Any] = {"variant_standard": std, "variants_mup": mups, "half": HALF.value,
                         "best_lr_fit_mean_over_seeds": {v: ctx.by_scale(v, "best_lr_fit") for v in [std, *mups]},
                         "optimal_lr_per_seed": {v: {s: {sc: c["fit"] for sc, c in cells.items()}
                                                     for s, cells in o.items()} for v, o in opt.items()}}
    subs: dict[str, dict] = {}
    headline: Interval | None = None
    for v in mups:
        sub, extra, iv = _stability(opt[std], opt[v], v)
        subs[f"optimum_stable_{v}"] = sub
        m[f"stability_{v}"] = extra
        headline = headline or iv
        siv, pairs = paired_gain(ctx, v, std)  # > 0: muParam lower than standard
        band = NO_EFFECT_SENS.value
        snote = f"standard - {v} sensitivity over paired (width, seed); holds if {v} is lower by at most {band} nats"
        loss0 = {sc: ctx.by_scale(std, "init_loss").get(sc, math.nan) - x
                 for sc, x in ctx.by_scale(v, "init_loss").items()}
        if any(d > band for d in loss0.values()):  # failed runs count at loss_0 (sensitivity.py)
            snote += f"; {v}'s loss_0 is lower (its head init), which lowers the cap of its failed runs"
        subs[f"does_not_lower_sensitivity_{v}"] = subcheck(at_most(siv, band), siv, snote)
        m[f"sensitivity_gain_per_scale_{v}"] = per_scale(pairs)
        m[f"init_loss_below_standard_{v}"] = loss0
    outcome = combine({k: s["outcome"] for k, s in subs.items()})
    n_seeds = max((len(m[f"stability_{v}"]["per_seed"]) for v in mups), default=0)
    note = " | ".join(f"{k}: {s['outcome']} ({s['note']})" for k, s in subs.items())
    return result(6, outcome, m, note, subchecks=subs, effect=headline,
                  effect_unit=f"decades: {HALF.value} x standard's optimum range minus {mups[0]}'s", n_seeds=n_seeds)


FINDING = register(Finding(
    number=6,
    title='muParam',
    claim='muParam keeps the optimal LR stable across width but does not lower LR sensitivity (and does not remove the need for qk-layernorm).',
    source='Sec. 3.2.3, Fig. 7',
    quantity=("per seed, the drift across widths of the fitted optimal LR (log10 max/min, decades), "
              "muParam against half of standard's; and paired LR sensitivity over the trainable LRs (nats)"),
    rule=("per muParam variant, two sub-checks combined: (1) optimum stable: reproduced if the 95% "
          "t-interval over seeds of half x range(standard) - range(muParam) lies above 0, not reproduced "
          "if below 0, else inconclusive; a standard optimum at a grid edge (a lower bound on its range) "
          "makes it inconclusive, a muParam optimum at a grid edge blocks 'reproduced'. (2) does not lower "
          "sensitivity: the paired (width, seed) interval of standard - muParam must lie below the "
          "no-effect band (reproduced), above it (not reproduced), else inconclusive. The qk-layernorm "
          "clause is not tested by this check."),
    figures=('lr_vs_loss', 'sensitivity_vs_size', 'best_lr_vs_size'),
    check=check,
    thresholds={"half": HALF, "no_effect_band": NO_EFFECT_SENS},
))
