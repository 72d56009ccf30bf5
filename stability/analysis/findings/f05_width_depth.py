"""Finding 5: Width vs depth (Sec. 3.2.4, Fig. 8).

Two ladders of the reference configuration: width (d_model grows, n_layers fixed) and depth
(n_layers grows, d_model fixed). Per seed, each ladder's slope is the least-squares slope of
sensitivity_trainable (nats) against log10(non-embedding parameters); the effect is
slope(depth) - slope(width) in nats per decade, with a t-interval over seeds. The ladders
must span matched parameter ranges, so that the two slopes describe the same stretch of size.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from .. import roles
from ..fits import polyfit
from ..verdict import INCONCLUSIVE, directional, subcheck, t_interval
from .base import Ctx, Finding, Threshold, inconclusive, not_run, register, result
from .paired_sens import NO_EFFECT_SENS, per_seed

SLOPE_BAND = Threshold(0.1, (
    "nats of sensitivity per decade of parameters. Over half a decade of parameters (the default "
    f"study's ladders span 0.6) a slope difference of 0.1 moves sensitivity by {NO_EFFECT_SENS.value} "
    "nats, the no-effect band of a sensitivity difference (findings 3, 6, 7), so a smaller slope "
    "difference counts as none."))
MAX_SPAN_RATIO = Threshold(1.5, (
    "largest ratio of the two ladders' spans in log10(parameters). The review rejected 0.48 against "
    "0.95 decades (a factor 2) as unmatched; 1.5 lies between matched (1) and that factor, so one "
    "ladder may be somewhat longer but not twice as long."))
UNIT = "nats of LR sensitivity per decade of parameters, depth minus width"


def _ladder(points: pl.DataFrame, fixed: str, varied: str) -> pl.DataFrame:
    """The points sharing the `fixed` dimension value that spans the most `varied` values."""
    best, best_n = pl.DataFrame(), 1
    for _, g in points.group_by(fixed, maintain_order=True):
        n = g[varied].n_unique()
        if n > best_n:
            best, best_n = g, n
    return best.sort("params") if best.height else best


def _span(lad: pl.DataFrame) -> float:
    p = lad["params"].to_numpy()
    return float(np.log10(p.max() / p.min()))


def _slope(lad: pl.DataFrame, sens: dict[str, float]) -> float | None:
    pts = [(math.log10(p), sens[s]) for s, p in zip(lad["scale"], lad["params"]) if s in sens]
    if len({x for x, _ in pts}) < 2 or len(pts) < lad.height:  # every rung of the ladder, or none
        return None
    coef, _ = polyfit(np.array([x for x, _ in pts]), np.array([y for _, y in pts]), 1)
    return float(coef[0])


def check(ctx: Ctx) -> dict:
    ref = ctx.reference
    shapes = roles.scale_shapes(ctx.runs.filter(pl.col("variant") == ref)) if ref else pl.DataFrame()
    if shapes.is_empty() or shapes["params"].null_count():
        return not_run(5, "needs model.d_model, model.n_layers and non_embedding_params per scale")
    width = _ladder(shapes, "model.n_layers", "model.d_model")
    depth = _ladder(shapes, "model.d_model", "model.n_layers")
    m: dict[str, Any] = {"variant": ref}
    for name, lad in (("width", width), ("depth", depth)):
        if lad.height:
            m[f"{name}_scales"] = lad["scale"].to_list()
            m[f"{name}_params"] = lad["params"].to_list()
            m[f"{name}_span_decades"] = _span(lad)
    if width.height < 2 or depth.height < 2:
        return inconclusive(5, "needs a width ladder (fixed n_layers) and a depth ladder (fixed d_model) of "
                               ">= 2 scales each", m, n_seeds=ctx.n_seeds(ref))
    ratio = max(m["width_span_decades"], m["depth_span_decades"]) / min(m["width_span_decades"],
                                                                        m["depth_span_decades"])
    m["span_ratio"] = ratio
    per = per_seed(ctx, ref)
    slopes = {s: (_slope(width, v), _slope(depth, v)) for s, v in sorted(per.items())}
    slopes = {s: sl for s, sl in slopes.items() if None not in sl}
    m["slope_width_per_seed"] = {s: w for s, (w, _) in slopes.items()}
    m["slope_depth_per_seed"] = {s: d for s, (_, d) in slopes.items()}
    m["slope_width"] = t_interval(w for w, _ in slopes.values()).as_dict()
    m["slope_depth"] = t_interval(d for _, d in slopes.values()).as_dict()
    iv = t_interval(d - w for w, d in slopes.values())
    if ratio > MAX_SPAN_RATIO.value:
        sub = subcheck(INCONCLUSIVE, iv, f"ladders span {m['width_span_decades']:.2f} (width) and "
                                            f"{m['depth_span_decades']:.2f} (depth) decades: not matched")
        return result(5, INCONCLUSIVE, m, sub["note"], subchecks={"depth_slope_exceeds_width_slope": sub},
                      effect=iv, effect_unit=UNIT, n_seeds=len(slopes))
    outcome = directional(iv, SLOPE_BAND.value)
    if iv.n >= 2:
        note = f"slope(depth) - slope(width) = {iv.estimate:+.3f} nats/decade over {iv.n} seeds"
    elif iv.n == 1:
        note = "one seed with a sensitivity at every rung of both ladders: no interval"
    else:
        note = "no seed has a sensitivity over >= 2 trainable LRs at every rung of both ladders"
    sub = subcheck(outcome, iv, f"per-seed slope difference; no-effect band +-{SLOPE_BAND.value} nats/decade")
    return result(5, outcome, m, note, subchecks={"depth_slope_exceeds_width_slope": sub}, effect=iv,
                  effect_unit=UNIT, n_seeds=len(slopes))


FINDING = register(Finding(
    number=5,
    title='Width vs depth',
    claim='Scaling depth increases LR sensitivity faster than scaling width.',
    source='Sec. 3.2.4, Fig. 8',
    quantity=('per seed, slope of LR sensitivity over the trainable LRs (nats) vs log10(non-embedding '
              'params) on the depth ladder minus on the width ladder (nats per decade)'),
    rule=('the ladders must span matched parameter ranges (span ratio <= max_span_ratio) with >= 2 scales '
          'each, else inconclusive; then reproduced if the 95% t-interval over seeds of the slope '
          'difference lies above 0, not reproduced if it lies below 0 or inside the no-effect band, '
          'else inconclusive (one seed: no interval, inconclusive).'),
    figures=('lr_vs_loss', 'sensitivity_vs_size'),
    check=check,
    thresholds={"slope_band": SLOPE_BAND, "max_span_ratio": MAX_SPAN_RATIO},
))
