"""Finding 5: Width vs depth (Sec. 3.2.4, Fig. 8).

Ported unchanged from the single claims module into the findings registry; its check is
still the pre-registry decision rule (see `rule`).
"""
from __future__ import annotations

import numpy as np
from typing import Any

import polars as pl
from .. import roles
from ..fits import polyfit
from ..sensitivity import col
from .base import (Ctx, Finding, Threshold, by_value, compare_sensitivity, frac, from_bool, not_run, one_factor,
                   register, result)




def _ladder(points: pl.DataFrame, fixed: str, varied: str) -> pl.DataFrame:
    """The points sharing the `fixed` dimension value that spans the most `varied` values."""
    best, best_n = pl.DataFrame(), 1
    for _, g in points.group_by(fixed, maintain_order=True):
        n = g[varied].n_unique()
        if n > best_n:
            best, best_n = g, n
    return best


def check(ctx: Ctx) -> dict:
    same = [v for v in ctx.configs if not roles.diff(ctx.configs[v], ctx.configs.get(ctx.reference, {}))]
    shapes = roles.scale_shapes(ctx.runs.filter(pl.col("variant").is_in(same))) if same else pl.DataFrame()
    if shapes.is_empty() or ctx.sens.is_empty():
        return not_run(5, "needs model.d_model / model.n_layers per scale and sensitivities")
    pts = shapes.join(ctx.sens.select("scale", "variant", "sensitivity", "non_embedding_params"),
                      on=["scale", "variant"]).drop_nulls(["sensitivity", "non_embedding_params"])
    width = _ladder(pts, "model.n_layers", "model.d_model")
    depth = _ladder(pts, "model.d_model", "model.n_layers")
    m: dict[str, Any] = {}
    for name, lad in (("width", width), ("depth", depth)):
        if lad.height >= 2:
            coef, _ = polyfit(np.log10(lad["non_embedding_params"].to_numpy()), lad["sensitivity"].to_numpy(), 1)
            m[f"{name}_scales"] = lad.sort("non_embedding_params")["scale"].to_list()
            m[f"{name}_slope"] = float(coef[0])
    if "width_slope" not in m or "depth_slope" not in m:
        return not_run(5, "needs a width ladder (fixed n_layers) and a depth ladder (fixed d_model) of >= 2 scales", m)
    return result(5, from_bool(m["depth_slope"] > m["width_slope"]), m, "slopes are sensitivity per decade of parameters")


FINDING = register(Finding(
    number=5,
    title='Width vs depth',
    claim='Scaling depth increases LR sensitivity faster than scaling width.',
    source='Sec. 3.2.4, Fig. 8',
    quantity='slope of LR sensitivity vs log10(non-embedding params), depth ladder vs width ladder',
    rule="pre-registry rule: " + 'Scaling depth raises LR sensitivity faster than scaling width.',
    figures=('lr_vs_loss', 'sensitivity_vs_size'),
    check=check,
))
