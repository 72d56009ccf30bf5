"""The study figures, as Altair charts saved to PNG, SVG and self-contained (offline) HTML.

One function per figure kind; each takes a study's tables (runs, curves, sensitivity,
forecast) and returns a chart. `render_figure(name, tables, outputs)` reads the table files
and writes one figure's files.

Conventions every figure keeps: model sizes are labelled by non-embedding parameters
("25k params"), never by scale names; every seed's run is drawn (faint when there are
several) beside the mean over seeds; every run appears, and every failed run (diverged,
non-finite or stalled: the runs table's `failed`) is a cross, drawn at the axis's top edge when
it has no finite value to plot; a run with one finite point is a point (a one-point line draws
nothing); markers that would coincide (every LR at step 0, every size at loss_0) are offset a
few pixels sideways; no NaN or infinity reaches a chart or its exported data (`_chart_data`),
so the HTML's inline data is strict JSON; colours are the Okabe-Ito palette (safe for the
common colour-vision deficiencies); axes are log-scaled as in the paper and carry their units.
"""
from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any, Callable, Mapping

import altair as alt
import numpy as np
import polars as pl

from .analysis import roles
from .analysis.findings import Ctx, f05_width_depth, f06_mup, f09_kappa
from .analysis.findings.paired_sens import NO_EFFECT_SENS, paired_gain, per_scale, usable_scales
from .analysis.fits import LOGIT_THRESHOLD
from .io import atomic_write
from .analysis.sensitivity import col, per_seed_sensitivity, scored

# Okabe-Ito, ordered so the first six are far apart in hue and lightness (sky blue, close to
# blue, and the low-contrast yellow come last).
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#000000", "#D55E00", "#56B4E9", "#F0E442"]
MAX_POINTS_PER_CURVE = 60  # per run in step plots: enough for the shape, quick to render
PANEL = {"width": 220, "height": 170}
STEP_PANEL = {"width": 200, "height": 120}
SEED_OPACITY = 0.35  # each seed's own run, when a mean over several seeds is drawn beside it
DODGE_DECADES = 0.012  # horizontal offset between variants at one size, so equal values stay visible
LOSS_PAD = 0.05  # nats of room around the loss axis
MIN_STEP_SPAN = 1.0  # nats: the least y range of finding 2's step panels, so a drift far below the
# check's scale (nats) cannot fill a panel
DODGE_PX = 7  # pixels between the markers of neighbouring groups at one x: about one marker's width
DODGE_SPAN_PX = 24  # at most this far from the first to the last group, so markers stay near their x
EDGE_NOTE = "no finite value: drawn at the top edge"

PARAMS_TITLE = "Non-embedding parameters"
LR_TITLE = "Peak learning rate"
RUN_SHAPE_DOMAIN, RUN_SHAPE_RANGE = ["trained", "failed"], ["circle", "cross"]
FAILED_NOTE = "cross: a failed run (diverged, non-finite or stalled)"
EDGE_TEXT = "a failed run without a finite value sits at the top edge"
VARIANT_SHAPES = ["circle", "square", "triangle-up", "diamond", "triangle-down", "triangle-right", "triangle-left",
                  "wedge"]


class NoData(Exception):
    """The study lacks what a figure plots; a placeholder says so instead."""


# ---- shared pieces -----------------------------------------------------------------------

def _need(df: pl.DataFrame | None, *columns: str) -> pl.DataFrame:
    if df is None or df.is_empty():
        raise NoData("no rows")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise NoData(f"missing column(s): {', '.join(missing)}")
    return df


def _chart_data(df: pl.DataFrame) -> pl.DataFrame:
    """The one gate between a table and a chart: NaN and +-inf in float columns become null,
    so no non-finite number reaches a chart or its exported data (strict JSON has neither);
    an all-null column (no edge note anywhere) becomes String, a type Altair can name."""
    fix = [pl.when(pl.col(c).is_finite()).then(pl.col(c)).alias(c) for c, t in df.schema.items() if t.is_float()]
    fix += [pl.col(c).cast(pl.String) for c, t in df.schema.items() if t == pl.Null]
    return df.with_columns(fix) if fix else df


def _positive(e: pl.Expr) -> pl.Expr:
    """Finite and > 0: what a log axis can draw (in Polars NaN > 0 is true, hence is_finite)."""
    return e.is_not_null() & e.is_finite() & (e > 0)


def _pos(v: Any) -> bool:
    """A number a log axis can draw: finite and > 0 (NaN and inf fail; in Python inf > 0)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _dodged(chart: alt.Chart, field: str, domain: list, px: float = DODGE_PX) -> list[alt.Chart]:
    """One copy of a point layer per value of `field`, each shifted sideways by a few pixels,
    so markers that coincide (every LR of one seed at step 0, every size at loss_0) stay
    visible side by side; the axis values are not changed."""
    if len(domain) <= 1:
        return [chart]
    mark = chart.mark.to_dict() if hasattr(chart.mark, "to_dict") else {"type": chart.mark}
    px = min(px, DODGE_SPAN_PX / (len(domain) - 1))
    out = []
    for i, v in enumerate(domain):
        c = chart.copy(deep=False)
        c.mark = alt.MarkDef(**{**mark, "xOffset": (i - (len(domain) - 1) / 2) * px})
        out.append(c.transform_filter(alt.FieldEqualPredicate(field=field, equal=v)))
    return out


def _no_attention(runs: pl.DataFrame | None) -> set[str]:
    """run_ids of zero-layer models (`model.n_layers: 0`): no attention, so no attention logit."""
    if runs is None or runs.is_empty() or "model.n_layers" not in runs.columns or "run_id" not in runs.columns:
        return set()
    return set(runs.filter(col(runs, "model.n_layers") == 0)["run_id"].to_list())


def fmt_params(n: float, digits: int = 2) -> str:
    """24576 -> "25k", 4727808 -> "4.7M" (`digits` significant digits)."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")):
        if abs(n) >= div:
            return f"{float(f'{n / div:.{digits}g}'):g}{suffix}"
    return f"{n:.{digits}g}"


def _shapes_conflict(shapes: dict[str, tuple]) -> bool:
    """Two scales where one is wider but shallower than the other (width and depth ladders):
    the parameter count alone then does not say which model is which."""
    items = [s for s in shapes.values() if None not in s]
    return any(a[0] < b[0] and a[1] > b[1] for a in items for b in items)


def size_labels(df: pl.DataFrame) -> dict[str, str]:
    """scale -> a legend label from its non-embedding parameters ("25k params"), ordered from
    smallest to largest; "(layers×width)" is added when the study mixes width and depth
    ladders, and more digits (then the scale name) when two labels would coincide."""
    if "scale" not in df.columns:
        return {}
    # a zero-layer model (finding 9's bigram baseline: only the final norm's parameters) shares
    # its scale's name with that scale's Transformers; it must not pull their label down
    if "model.n_layers" in df.columns:
        layered = col(df, "model.n_layers").fill_null(1) > 0
        df = df.filter(layered | ~layered.any().over("scale"))
    aggs = [col(df, "non_embedding_params").mean().alias("p"),
            col(df, "model.n_layers").mean().alias("L"), col(df, "model.d_model").mean().alias("d")]
    g = df.group_by("scale").agg(*aggs).sort("p", "scale", nulls_last=True)
    shapes = {s: (d, L) for s, L, d in zip(g["scale"], g["L"], g["d"])}
    conflict = _shapes_conflict(shapes)
    out: dict[str, str] = {}
    for digits in (2, 3):
        out = {}
        for s, p in zip(g["scale"], g["p"]):
            label = f"{fmt_params(p, digits)} params" if p is not None and math.isfinite(p) else str(s)
            d, L = shapes[s]
            if conflict and d is not None and L is not None:
                label += f" ({L:g}×{d:g})"
            out[s] = label
        if len(set(out.values())) == len(out):
            return out
    return {s: f"{lab} [{s}]" for s, lab in out.items()}


def _with_size(df: pl.DataFrame, labels: dict[str, str]) -> pl.DataFrame:
    return df.with_columns(size=pl.col("scale").replace_strict(labels, default=pl.col("scale").cast(pl.String)))


def _size_title(labels: dict[str, str]) -> str:
    return "Model size (layers×width)" if any("×" in v for v in labels.values()) else "Model size"


def _colour(field: str, title: str, domain: list | None = None, **kw: Any) -> alt.Color:
    kw.setdefault("legend", alt.Legend(symbolOpacity=1))  # legend swatches stay solid beside faint marks
    scale = alt.Scale(range=OKABE_ITO, domain=domain) if domain is not None else alt.Scale(range=OKABE_ITO)
    return alt.Color(field, title=title, scale=scale, sort=domain, **kw)


def _run_shape(title: str = "Run") -> alt.Shape:
    return alt.Shape("outcome:N", title=title, scale=alt.Scale(domain=RUN_SHAPE_DOMAIN, range=RUN_SHAPE_RANGE),
                     legend=alt.Legend(symbolOpacity=1))


def _variant_shape(field: str, title: str, domain: list[str]) -> alt.Shape:
    """One marker per variant (never the cross, which marks failed runs); with the colour's
    field, title and domain the two share one legend."""
    return alt.Shape(field, title=title, sort=domain, scale=alt.Scale(domain=domain, range=VARIANT_SHAPES))


def _outcome_col() -> pl.Expr:
    return pl.when(pl.col("failed")).then(pl.lit("failed")).otherwise(pl.lit("trained")).alias("outcome")


def _lr_label(df: pl.DataFrame, column: str = "lr") -> pl.DataFrame:
    """A string LR column (`lr_label`) so LRs are discrete colours, with a sort order."""
    return df.with_columns(lr_label=pl.col(column).map_elements(lambda v: f"{v:g}", return_dtype=pl.String))


def _lr_domain(df: pl.DataFrame) -> list[str]:
    return [f"{v:g}" for v in sorted(df["lr"].unique().to_list())]


def _logx(field: str, title: str, values: list[float] | None = None, fmt: str = ".2~s") -> alt.X:
    """Log x axis fitted to the data (no padding out to whole decades); `values` pins the ticks."""
    axis = alt.Axis(format=fmt, values=values, grid=False) if values else alt.Axis(format=fmt, tickCount=6, grid=False)
    return alt.X(field, title=title, scale=alt.Scale(type="log", nice=False, padding=12), axis=axis)


def _params_x(values: list[float], field: str = "x:Q") -> alt.X:
    """Parameters axis with a tick at every model size of the study (a tick needs a finite
    positive value: NaN in the axis would make the spec invalid JSON)."""
    return _logx(field, PARAMS_TITLE, sorted({float(v) for v in values if _pos(v)}))


def _lr_x(df: pl.DataFrame, field: str = "lr:Q") -> alt.X:
    return _logx(field, LR_TITLE, sorted(v for v in df["lr"].unique().to_list() if _pos(v)), fmt="~g")


def _logy(field: str, title: str, domain: list[float] | None = None, **kw: Any) -> alt.Y:
    """Log y axis; with `domain`, marks outside it are clamped to its edge and the ticks sit
    on whole decades (one grid line per labelled tick)."""
    if not domain:
        return alt.Y(field, title=title, scale=alt.Scale(type="log", nice=False, padding=8),
                     axis=alt.Axis(format="~e", tickCount=6), **kw)
    lo, hi = math.ceil(math.log10(domain[0])), math.floor(math.log10(domain[1]))
    step = max(1, math.ceil((hi - lo + 1) / 8))
    ticks = [10.0 ** k for k in range(lo, hi + 1, step)]
    if len(ticks) < 3:  # under about two decades: 1-2-5 ticks, so the axis still has numbers
        ticks = [m * 10.0 ** k for k in range(lo - 1, hi + 1) for m in (1, 2, 5)
                 if domain[0] <= m * 10.0 ** k <= domain[1]]
    axis = alt.Axis(format="~g" if len(ticks) and max(ticks) / min(ticks) < 1e3 else "~e", values=ticks) \
        if len(ticks) >= 2 else alt.Axis(format="~g", tickCount=4)
    return alt.Y(field, title=title, scale=alt.Scale(type="log", domain=domain, clamp=True, nice=False),
                 axis=axis, **kw)


def _log_domain(values: pl.Series, pad: float = 1.5) -> list[float]:
    """[min / pad, max * pad] of the finite positive values: a log axis fitted to the data.
    Raises NoData when there are none."""
    v = values.cast(pl.Float64).drop_nulls()
    v = v.filter(v.is_finite() & (v > 0))
    if v.is_empty():
        raise NoData("no finite positive values to draw")
    return [float(v.min()) / pad, float(v.max()) * pad]


def _dodge(df: pl.DataFrame, by: str, x: str, order: list[str] | None = None) -> pl.DataFrame:
    """Column `x` shifted by DODGE_DECADES per group of `by` (log axis), as column "x"."""
    order = order or df[by].unique(maintain_order=True).to_list()
    k = len(order)
    offset = {v: (i - (k - 1) / 2) * DODGE_DECADES for i, v in enumerate(order)}
    return df.with_columns(x=pl.col(x) * (10 ** pl.col(by).replace_strict(offset, default=0.0)))


def _seed_note(runs: pl.DataFrame) -> tuple[int, float]:
    """(seeds per configuration, opacity of one seed's mark)."""
    n = int(runs.group_by("variant", "scale", "lr").agg(pl.col("seed").n_unique())["seed"].max()) \
        if {"variant", "scale", "lr", "seed"} <= set(runs.columns) and runs.height else 1
    return n, (SEED_OPACITY if n > 1 else 0.9)


def _mean_text(n: int) -> str:
    """What a line through the seeds is: "mean over 3 seeds", or one seed's own value."""
    return f"mean over {n} seeds" if n != 1 else "1 seed (no interval)"


def _seeds_text(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def _loss_domain(values: pl.Series, init: pl.Series) -> list[float]:
    """From just below the lowest loss to the initial loss (loss_0, where the sensitivity
    metric counts a failed run): a small difference then looks small."""
    lo, hi = float(values.min()), float(max(values.max(), init.max()))
    return [math.floor((lo - LOSS_PAD) * 10) / 10, math.ceil((hi + LOSS_PAD) * 10) / 10]


def _facet(chart: alt.Chart | alt.LayerChart, field: str, title: str, n: int, columns: int = 3,
           sort: list | None = None) -> alt.FacetChart:
    return chart.properties(**PANEL).facet(facet=alt.Facet(field, title=title, sort=sort),
                                           columns=min(columns, max(n, 1)))


def _thin(curves: pl.DataFrame, max_rows: int = MAX_POINTS_PER_CURVE) -> pl.DataFrame:
    """Every k-th row of each run (first and last kept), so step plots stay small."""
    i = pl.int_range(pl.len()).over("run_id")
    n = pl.len().over("run_id")
    k = (n / max_rows).ceil().cast(pl.Int64).clip(lower_bound=1)
    return curves.filter((i % k == 0) | (i == n - 1))


def _failed_ids(runs: pl.DataFrame | None) -> set[str]:
    if runs is None or runs.is_empty() or "init_loss" not in runs.columns or "run_id" not in runs.columns:
        return set()
    return set(scored(runs).filter(pl.col("failed"))["run_id"].to_list())


def _step_rows(df: pl.DataFrame, failed: set[str], value: str, ok: pl.Expr,
               absent: pl.DataFrame | None = None) -> pl.DataFrame:
    """The rows of one step chart, by `kind`: "curve" (each run's drawable values, thinned:
    a line), "single" (a run with one drawable value: a point, since a one-point line draws
    nothing) and "end" (where a failed run's curve ends: a cross). A failed run without any
    drawable value gets an "end" row at its last logged step with `value` null and `edge`
    true: the caller puts it at the axis's top edge. `ok` says which values are drawable
    (finite, and positive on a log axis); `absent`: failed runs with no logged curve at all,
    in df's columns (value null)."""
    good = df.filter(ok)
    many = pl.len().over("run_id") > 1
    fail = list(failed)
    ends = good.filter(pl.col("run_id").is_in(fail)).sort("step").group_by("run_id", maintain_order=True).last()
    blank = (df.filter(pl.col("run_id").is_in(fail) & ~pl.col("run_id").is_in(good["run_id"].unique().to_list()))
             .sort("step").group_by("run_id", maintain_order=True).last().with_columns(pl.lit(None, pl.Float64)
                                                                                       .alias(value)))
    parts = [_thin(good.filter(many)).with_columns(kind=pl.lit("curve"), edge=pl.lit(False)),
             good.filter(~many).with_columns(kind=pl.lit("single"), edge=pl.lit(False)),
             ends.select(df.columns).with_columns(kind=pl.lit("end"), edge=pl.lit(False)),
             blank.select(df.columns).with_columns(kind=pl.lit("end"), edge=pl.lit(True))]
    if absent is not None and absent.height:
        parts.append(absent.filter(~pl.col("run_id").is_in(df["run_id"].unique().to_list()))
                     .select(df.columns).with_columns(kind=pl.lit("end"), edge=pl.lit(True)))
    return pl.concat(parts, how="vertical_relaxed")


def _absent_runs(runs: pl.DataFrame | None, failed: set[str], columns: list[str], value: str) -> pl.DataFrame | None:
    """Failed runs of the runs table shaped as step rows: step = where the run stopped
    (diverged_step, else steps_completed, else 0), `value` null; for _step_rows' `absent`."""
    if runs is None or runs.is_empty() or not failed or not set(columns) - {value, "step"} <= set(runs.columns):
        return None
    step = pl.coalesce(col(runs, "diverged_step", pl.Int64), col(runs, "steps_completed", pl.Int64), pl.lit(0))
    return runs.filter(pl.col("run_id").is_in(list(failed))).select(
        *[pl.col(c) for c in columns if c not in (value, "step")], step=step, **{value: pl.lit(None, pl.Float64)}
    ).select(columns)


def _step_marks(base: alt.Chart, rows: pl.DataFrame, n_seeds: int, group: str, domain: list[str],
                tooltip: list) -> list:
    """A step chart's layers over _step_rows: lines, one-point runs as points, crosses where
    failed runs end; points and crosses offset sideways by `group` (the colour), so runs that
    coincide (every LR at step 0) are all visible. Only the groups that have a marker take a
    slot, so a marker stays within a few pixels of its line's end."""
    slots = set(rows.filter(pl.col("kind") != "curve")[group].to_list())
    domain = [v for v in domain if v in slots]
    single = base.mark_point(size=40, filled=True, opacity=1).encode(tooltip=tooltip).transform_filter(
        alt.datum.kind == "single")
    cross = base.mark_point(size=70, filled=True, opacity=1, shape="cross").encode(tooltip=tooltip).transform_filter(
        alt.datum.kind == "end")
    return [base.mark_line(opacity=0.6 if n_seeds > 1 else 0.9).encode(detail="run_id:N").transform_filter(
        alt.datum.kind == "curve"), *_dodged(single, group, domain), *_dodged(cross, group, domain)]


def _largest_scale(curves: pl.DataFrame, runs: pl.DataFrame | None) -> str:
    ref = runs if runs is not None and not runs.is_empty() and "scale" in runs.columns else curves
    labels = size_labels(ref)
    return list(labels)[-1] if labels else str(curves["scale"].max())


def one_factor_family(runs: pl.DataFrame, key: str) -> list[str]:
    """The first group of variants that differ only in `key` and hold >= 2 values of it
    (a one-factor comparison read from the run configs), else []."""
    configs = roles.variant_configs(runs)
    groups: dict[tuple, list[str]] = {}
    for v, cfg in configs.items():
        groups.setdefault(tuple(sorted((k, str(x)) for k, x in cfg.items() if k != key)), []).append(v)
    for members in groups.values():
        if len({configs[v].get(key) for v in members}) >= 2:
            return members
    return []


def eps_family(runs: pl.DataFrame) -> list[str]:
    """Variants that differ only in optim.eps (finding 10's comparison), else every variant."""
    return one_factor_family(runs, "optim.eps") or list(roles.variant_configs(runs))


def placeholder(name: str, reason: str) -> alt.Chart:
    df = pl.DataFrame({"text": [f"No data for this figure: {reason}"]})
    return alt.Chart(df).mark_text(fontSize=14).encode(text="text:N").properties(
        title=name, width=420, height=80)


# ---- loss and sensitivity ----------------------------------------------------------------

def lr_vs_loss(runs: pl.DataFrame) -> alt.FacetChart:
    """Final loss vs peak LR per variant (panels), one colour per model size: every seed's run
    (a cross when it failed, drawn at loss_0 as the sensitivity metric counts it) and the mean
    over seeds as a line. The y axis runs from the best loss to loss_0 in every panel."""
    runs = scored(_need(runs, "lr", "scale", "variant", "init_loss", "seed"))
    labels = size_labels(runs)
    n_seeds, opacity = _seed_note(runs)
    per_run = _with_size(runs, labels).select("variant", "size", "scale", "lr", "seed", "init_loss",
                                              col(runs, "run_id", pl.String).alias("run_id"),
                                              loss="loss_capped", failed="failed").with_columns(_outcome_col())
    mean = (per_run.group_by("variant", "size", "lr").agg(pl.col("loss").mean(), pl.col("failed").all())
            .with_columns(_outcome_col()))
    df = pl.concat([per_run.select("variant", "size", "lr", "loss", "outcome", pl.col("seed").cast(pl.Int64),
                                   "run_id", kind=pl.lit("run")),
                    mean.select("variant", "size", "lr", "loss", "outcome", seed=pl.lit(None, pl.Int64),
                                run_id=pl.lit(None, pl.String), kind=pl.lit("mean"))]).sort("variant", "size", "lr")
    y = alt.Y("loss:Q", title="Final validation loss (nats)",
              scale=alt.Scale(domain=_loss_domain(per_run["loss"], per_run["init_loss"]), nice=False))
    sizes = list(labels.values())
    colour = _colour("size:N", _size_title(labels), sizes)
    base = alt.Chart().encode(x=_lr_x(runs), y=y, color=colour)
    points = base.mark_point(size=55, filled=True, opacity=opacity).encode(
        shape=_run_shape(), tooltip=["variant", "size", "lr", "seed", alt.Tooltip("loss:Q", format=".4f"),
                                     "outcome"]).transform_filter(alt.datum.kind == "run")
    layers = [
        base.mark_line(opacity=0.8).transform_filter(alt.datum.kind == "mean"),
        *_dodged(points, "size", sizes),  # failed runs of every size sit at loss_0: side by side
    ]
    per_panel = mean.group_by("variant").len()["len"].max()
    if per_panel <= 4:  # few points: print the values, so equal-looking ones can be compared
        layers.append(base.mark_text(dx=8, align="left", fontSize=11).encode(
            text=alt.Text("loss:Q", format=".3f")).transform_filter(alt.datum.kind == "mean"))
    chart = alt.layer(*layers, data=_chart_data(df))
    subtitle = [f"Line: {_mean_text(n_seeds)}; points: each run; {FAILED_NOTE}, drawn at its initial loss "
                "as the LR-sensitivity metric counts it", "The y axis runs from the best loss to the initial loss; "
                "runs of different sizes at one LR are offset sideways so none hides another"]
    return _facet(chart, "variant:N", "Variant", df["variant"].n_unique()).properties(
        title=alt.Title("Final loss vs learning rate", subtitle=subtitle))


def _ladders(runs: pl.DataFrame) -> dict[str, list[str]] | None:
    """For a one-variant study of width and depth ladders (finding 5): {"width ladder (L
    layers)": scales, "depth ladder (width d)": scales}, picked as finding 5's check picks
    them (f05_width_depth._ladder); None unless both ladders have >= 2 rungs."""
    if runs["variant"].n_unique() != 1:
        return None
    shapes = roles.scale_shapes(runs)
    if shapes.is_empty() or shapes["params"].null_count():
        return None
    width = f05_width_depth._ladder(shapes, "model.n_layers", "model.d_model")
    depth = f05_width_depth._ladder(shapes, "model.d_model", "model.n_layers")
    if width.height < 2 or depth.height < 2:
        return None
    return {f"width ladder ({width['model.n_layers'][0]:g} layers)": width["scale"].to_list(),
            f"depth ladder (width {depth['model.d_model'][0]:g})": depth["scale"].to_list()}


SENS_SETS = {"sensitivity": "over the full LR grid",
             "sensitivity_trainable": "over the LRs where some run of the study trained"}


def _all_failed(runs: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """keys + all_failed: whether every run of that group failed (the runs table's `failed`)."""
    return scored(runs).group_by(keys).agg(all_failed=pl.col("failed").all())


def sensitivity_vs_size(sens: pl.DataFrame, runs: pl.DataFrame | None = None) -> alt.FacetChart:
    """LR sensitivity vs model size per variant: each seed's value (faint), the mean over seeds
    (line) and the min-max over seeds (bars); one panel per LR set (full grid, trainable LRs).
    A seed whose every LR failed is a cross (its sensitivity is 0 by construction). A
    one-variant study of width and depth ladders (finding 5) draws one line per ladder, with
    each seed's own line (the per-seed slopes the check compares)."""
    if runs is None or runs.is_empty() or "init_loss" not in runs.columns:
        raise NoData("no runs to compute per-seed sensitivities from")
    seeds = per_seed_sensitivity(runs)
    if seeds.is_empty():
        raise NoData("no sensitivity values")
    labels = size_labels(runs)
    params = runs.group_by("scale", "variant").agg(col(runs, "non_embedding_params").mean().alias("params"))
    seeds = (seeds.join(params, on=["scale", "variant"]).filter(_positive(pl.col("params")))
             .join(_all_failed(runs, ["scale", "variant", "seed"]).with_columns(pl.col("seed").cast(pl.Int64)),
                   on=["scale", "variant", "seed"], how="left"))
    if seeds.is_empty():
        raise NoData("no model with non-embedding parameters")
    ladders = _ladders(runs)
    if ladders:
        seeds = pl.concat([seeds.filter(pl.col("scale").is_in(members)).with_columns(variant=pl.lit(name))
                           for name, members in ladders.items()])
    no_trainable = seeds.filter(pl.col("sensitivity_trainable").is_null())
    long = seeds.unpivot(index=["variant", "scale", "seed", "params", "all_failed"], on=list(SENS_SETS),
                         variable_name="set", value_name="sens").filter(pl.col("sens").is_finite()).with_columns(
        set=pl.col("set").replace_strict(SENS_SETS))
    if long.is_empty():
        raise NoData("no sensitivity values")
    variants = sorted(seeds["variant"].unique().to_list())  # sorted: colours stable across renders
    long = _dodge(long, "variant", "params", variants)
    stats = long.group_by("variant", "scale", "set").agg(
        pl.col("x").first(), pl.col("params").first(), mean=pl.col("sens").mean(), lo=pl.col("sens").min(),
        hi=pl.col("sens").max(), n_seeds=pl.col("seed").n_unique())
    df = pl.concat([long.select("variant", "scale", "set", "x", "params", "seed", "sens", "all_failed",
                                kind=pl.lit("seed")),
                    stats.select("variant", "scale", "set", "x", "params", pl.lit(None, pl.Int64).alias("seed"),
                                 pl.col("mean").alias("sens"), pl.lit(None, pl.Boolean).alias("all_failed"),
                                 kind=pl.lit("mean"))], how="vertical_relaxed")
    df = df.join(stats.select("variant", "scale", "set", "lo", "hi", "n_seeds"), on=["variant", "scale", "set"])
    df = _with_size(df, labels).sort("variant", "set", "params")
    n_seeds = int(stats["n_seeds"].max())
    x = _params_x(df["params"].to_list())
    y_title = "LR sensitivity (nats)"
    legend = "Ladder" if ladders else "Variant"
    colour = _colour("variant:N", legend, variants)
    base = alt.Chart().encode(x=x, color=colour)
    mean_only = alt.datum.kind == "mean"
    layers = [
        base.mark_line().encode(y=alt.Y("sens:Q", title=y_title)).transform_filter(mean_only),
        base.mark_point(filled=True, size=60).encode(
            y=alt.Y("sens:Q", title=y_title), shape=_variant_shape("variant:N", legend, variants),
            tooltip=["variant", "size", alt.Tooltip("sens:Q", title="mean", format=".4f"),
                     alt.Tooltip("lo:Q", format=".4f"), alt.Tooltip("hi:Q", format=".4f"), "n_seeds"]
        ).transform_filter(mean_only),
        base.mark_point(shape="cross", filled=True, size=90, color="black").encode(
            y=alt.Y("sens:Q", title=y_title), tooltip=["variant", "size", "seed", "all_failed"]
        ).transform_filter(alt.datum.kind == "seed").transform_filter(alt.datum.all_failed == True),  # noqa: E712
    ]
    if n_seeds > 1:
        layers += [
            base.mark_errorbar(ticks=True).encode(y=alt.Y("lo:Q", title=y_title), y2="hi:Q").transform_filter(
                mean_only),
            base.mark_point(size=22, opacity=SEED_OPACITY, filled=True).encode(
                y=alt.Y("sens:Q", title=y_title),
                tooltip=["variant", "size", "seed", alt.Tooltip("sens:Q", format=".4f")]
            ).transform_filter(alt.datum.kind == "seed"),
        ]
        if ladders:  # each seed's own ladder line: its slope is what finding 5 compares, seed by seed
            layers.append(base.mark_line(opacity=SEED_OPACITY, strokeDash=[3, 2]).encode(
                y=alt.Y("sens:Q", title=y_title), detail="seed:N").transform_filter(alt.datum.kind == "seed"))
    subtitle = [f"Line: {_mean_text(n_seeds)}" + ("; bars: min-max over seeds; faint points: each seed"
                                                           if n_seeds > 1 else "")
                + ("; dashed: each seed's own ladder" if ladders and n_seeds > 1 else ""),
                "Black cross: a seed whose every LR failed (its sensitivity is 0 by construction); variants at one "
                "size are offset sideways so equal values stay visible"]
    if ladders:  # the number finding 5's verdict reads, from its own check
        eff = f05_width_depth.check(_ctx(runs, sens)).get("effect") or {}
        if eff.get("n"):
            ci = (f", 95% interval {eff['lo']:+.3f} to {eff['hi']:+.3f}" if eff.get("lo") is not None
                  and eff.get("hi") is not None else " (no interval)")
            subtitle.append(f"Finding 5's effect, per seed slope(depth) - slope(width) over the trainable LRs: "
                            f"{eff['estimate']:+.3f} nats per decade{ci} over {eff['n']} seeds")
    if no_trainable.height:
        cells = sorted({f"{labels.get(s, s)} ({v})" for s, v in no_trainable.select("scale", "variant").iter_rows()})
        subtitle.append("No LR trained, so no value over the trainable LRs, at: " + ", ".join(cells))
    chart = alt.layer(*layers, data=_chart_data(df)).properties(width=300, height=240)
    return chart.facet(column=alt.Column("set:N", title="LR sensitivity", sort=list(SENS_SETS.values()))).properties(
        title=alt.Title("LR sensitivity vs model size", subtitle=subtitle))


OPTIMUM_STATUS = {  # where a seed's fitted optimal LR lies in the grid -> (legend, marker)
    "inside": ("inside the LR grid", "circle"),
    "upper": ("top edge (a lower bound)", "triangle-up"),
    "lower": ("bottom edge (an upper bound)", "triangle-down"),
    "failed": ("every LR failed", "cross"),
}


def _ctx(runs: pl.DataFrame, sens: pl.DataFrame | None) -> Ctx:
    """The findings checks' view of a study's tables, so a figure reads the numbers its verdict reads."""
    return Ctx({"name": ""}, runs, sens if sens is not None else pl.DataFrame(), None, None)


def best_lr_vs_size(runs: pl.DataFrame, sens: pl.DataFrame | None = None) -> alt.LayerChart:
    """Fitted optimal LR vs model size per variant and seed (finding 6: muParam keeps it
    stable across width): each seed's optimum as finding 6's check computes it
    (f06_mup._optima: the vertex of a quadratic in log10 LR), its marker saying whether it lies
    inside the grid or at an edge (then only a bound), a cross where every LR failed; faint
    lines join each seed's optima, the solid line is the geometric mean over seeds; dashed
    lines mark the grid's edges."""
    runs = _need(runs, "lr", "scale", "variant", "init_loss", "seed", "non_embedding_params")
    lrs = sorted(runs["lr"].unique().to_list())
    if len(lrs) < 3:
        raise NoData("an optimal LR needs >= 3 LRs in the grid")
    ctx = _ctx(runs, sens)
    mid = math.sqrt(lrs[0] * lrs[-1])
    rows = []
    for v in ctx.configs:
        for seed, cells in f06_mup._optima(ctx, v).items():
            for scale, c in cells.items():
                status = "inside" if not c["edge"] else "upper" if c["fit"] >= mid else "lower"
                rows.append({"variant": v, "scale": scale, "seed": seed, "lr_opt": float(c["fit"]), "status": status})
    failed = _all_failed(ctx.runs, ["variant", "scale", "seed"]).filter(pl.col("all_failed"))
    rows += [{"variant": v, "scale": sc, "seed": int(sd), "lr_opt": float(lrs[0]), "status": "failed"}
             for v, sc, sd in failed.select("variant", "scale", "seed").iter_rows()]
    df = pl.DataFrame(rows, schema={"variant": pl.String, "scale": pl.String, "seed": pl.Int64,
                                    "lr_opt": pl.Float64, "status": pl.String})
    params = ctx.runs.group_by("scale", "variant").agg(col(ctx.runs, "non_embedding_params").mean().alias("params"))
    df = df.join(params, on=["scale", "variant"]).filter(_positive(pl.col("params")))
    if df.is_empty():
        raise NoData("no optimal LR values")
    labels = size_labels(ctx.runs)
    variants = [v for v in ctx.configs if v in set(df["variant"])]
    df = _with_size(_dodge(df, "variant", "params", variants), labels).with_columns(
        optimum=pl.col("status").replace_strict({k: t for k, (t, _) in OPTIMUM_STATUS.items()}))
    ok = df.filter(pl.col("status") != "failed")
    mean = ok.group_by("variant", "scale").agg(pl.col("x").first(), pl.col("params").first(),
                                               lr_opt=10 ** pl.col("lr_opt").log10().mean())
    drift = (ok.group_by("variant", "seed").agg(d=(pl.col("lr_opt").max() / pl.col("lr_opt").min()).log10(),
                                                 n=pl.len()).filter(pl.col("n") >= 2)
             .group_by("variant").agg(pl.col("d").mean(), n_seeds=pl.len()))
    data = pl.concat([df.with_columns(kind=pl.lit("seed")), mean.with_columns(kind=pl.lit("mean"))],
                     how="diagonal_relaxed").sort("variant", "params")
    n_seeds = int(df["seed"].n_unique())
    ydom = [lrs[0] / 2, lrs[-1] * 2]
    yscale = alt.Scale(type="log", domain=ydom, nice=False)
    y = alt.Y("lr_opt:Q", title="Optimal peak LR (fitted)", scale=yscale, axis=alt.Axis(values=lrs, format="~g"))
    base = alt.Chart().encode(x=_params_x(df["params"].to_list()), y=y,
                              color=_colour("variant:N", "Variant", variants))
    legend = [t for t, _ in OPTIMUM_STATUS.values()]
    points = base.mark_point(filled=True, size=60, opacity=0.9).encode(
        shape=alt.Shape("optimum:N", title="Seed's optimum", sort=legend,
                        scale=alt.Scale(domain=legend, range=[m for _, m in OPTIMUM_STATUS.values()])),
        tooltip=["variant", "size", "seed", alt.Tooltip("lr_opt:Q", format=".3g"), "optimum"]
    ).transform_filter(alt.datum.kind == "seed")
    edges = pl.DataFrame({"edge": [float(lrs[0]), float(lrs[-1])]})
    layers = [
        alt.Chart(edges).mark_rule(strokeDash=[4, 4], color="gray").encode(y=alt.Y("edge:Q", scale=yscale)),
        base.mark_line(strokeWidth=2.5).transform_filter(alt.datum.kind == "mean"),
        base.mark_line(opacity=SEED_OPACITY, strokeDash=[3, 2]).encode(detail="seed:N").transform_filter(
            (alt.datum.kind == "seed") & (alt.datum.status != "failed")),
        *_dodged(points, "seed", sorted(df["seed"].unique().to_list())),
    ]
    subtitle = ["Points: each seed's optimum (the vertex of a quadratic in log10 LR, as finding 6's check fits it); "
                f"solid line: geometric {_mean_text(n_seeds)}; dashed lines: each seed's, and the LR grid's edges",
                "An optimum at a grid edge is only a bound (a triangle pointing out of the grid); cross: every LR of "
                "that seed failed (drawn at the lowest LR)"]
    if drift.height:
        subtitle.append("Drift across sizes, log10(max / min) of a seed's optima, mean over seeds: " + ", ".join(
            f"{v} {d:.2f} decades ({_seeds_text(n)})" for v, d, n in drift.sort("variant").iter_rows())
            + " (finding 6 compares muParam's with half of standard's)")
    return alt.layer(*layers, data=_chart_data(data)).properties(
        title=alt.Title("Optimal learning rate vs model size, per seed", subtitle=subtitle, anchor="start"), width=380,
        height=260)


def warmup_effect(runs: pl.DataFrame, sens: pl.DataFrame | None = None) -> alt.LayerChart:
    """Finding 3's paired effect: per (size, seed), the LR sensitivity over the trainable LRs
    of the shortest warm-up minus the longest's (nats; > 0: the longer warm-up is less
    sensitive), as the check pairs them (paired_sens.paired_gain on its usable sizes); per
    size the mean with its 95% t-interval over seeds; shaded: the no-effect band. A pair in
    which one arm failed at every LR is a cross."""
    runs = _need(runs, "lr", "scale", "variant", "init_loss", "seed", "optim.warmup_steps")
    ctx = _ctx(runs, sens)
    fam = one_factor_family(ctx.runs, "optim.warmup_steps")
    by = {}
    for v in fam:
        w = ctx.cfg(v, "optim.warmup_steps")
        if isinstance(w, (int, float)):
            by.setdefault(w, v)
    if len(by) < 2:
        raise NoData("no variants that differ only in optim.warmup_steps")
    short, long_ = by[min(by)], by[max(by)]
    iv, pairs = paired_gain(ctx, long_, short)
    if not pairs:
        raise NoData("no size where both warm-ups have a sensitivity over >= 2 trainable LRs")
    failed = _all_failed(ctx.runs, ["variant", "scale", "seed"]).filter(pl.col("all_failed"))
    bad = {(sc, int(sd)) for v, sc, sd in failed.select("variant", "scale", "seed").iter_rows() if v in (short, long_)}
    params = ctx.runs.group_by("scale").agg(col(ctx.runs, "non_embedding_params").mean().alias("params"))
    pts = pl.DataFrame([{"scale": p["scale"], "seed": int(p["seed"]), "diff": p["diff"],
                         "outcome": "failed" if (p["scale"], int(p["seed"])) in bad else "trained"} for p in pairs])
    stats = pl.DataFrame([{"scale": sc, "mean": d["estimate"], "lo": d["lo"], "hi": d["hi"], "n": d["n"]}
                          for sc, d in per_scale(pairs).items()],
                         schema={"scale": pl.String, "mean": pl.Float64, "lo": pl.Float64, "hi": pl.Float64,
                                 "n": pl.Int64})
    labels = size_labels(ctx.runs)
    data = _with_size(pl.concat([pts.with_columns(kind=pl.lit("seed")), stats.with_columns(kind=pl.lit("mean"))],
                                how="diagonal_relaxed").join(params, on="scale"), labels).sort("params")
    band = NO_EFFECT_SENS.value
    y_title = f"Sensitivity, warm-up {min(by):g} minus {max(by):g} steps (nats)"
    y = alt.Y("diff:Q", title=y_title)
    x = _params_x(data["params"].to_list(), "params:Q")
    seeds = sorted(pts["seed"].unique().to_list())
    base = alt.Chart().encode(x=x)
    points = base.mark_point(filled=True, size=50, opacity=0.8).encode(
        y=y, color=_colour("seed:N", "Seed", seeds), shape=_run_shape("Pair"),
        tooltip=["size", "seed", alt.Tooltip("diff:Q", format="+.4f"), "outcome"]).transform_filter(
        alt.datum.kind == "seed")
    layers = [
        alt.Chart(pl.DataFrame({"lo": [-band], "hi": [band]})).mark_rect(color="lightgray", opacity=0.5).encode(
            y=alt.Y("lo:Q", title=y_title), y2="hi:Q"),
        alt.Chart(pl.DataFrame({"zero": [0.0]})).mark_rule(color="gray").encode(y="zero:Q"),
        base.mark_errorbar(ticks=True, color="black").encode(y=alt.Y("lo:Q", title=y_title), y2="hi:Q")
        .transform_filter(alt.datum.kind == "mean"),
        base.mark_point(shape="diamond", filled=True, size=80, color="black").encode(
            y=alt.Y("mean:Q", title=y_title), tooltip=["size", alt.Tooltip("mean:Q", format="+.4f"),
                                                       alt.Tooltip("lo:Q", format="+.4f"),
                                                       alt.Tooltip("hi:Q", format="+.4f"), "n"]
        ).transform_filter(alt.datum.kind == "mean"),
        *_dodged(points, "seed", seeds),
    ]
    pooled = (f"{iv.estimate:+.3f} nats, 95% interval {iv.lo:+.3f} to {iv.hi:+.3f} over {iv.n} (size, seed) pairs"
              if iv.n >= 2 and math.isfinite(iv.lo) else f"{iv.estimate:+.3f} nats from one pair: no interval")
    subtitle = [f"Points: each seed's paired difference ({short} minus {long_}), over the LRs where some run "
                f"trained; diamond and bar: mean and 95% t-interval over seeds; shaded: no effect (+-{band:g} nats)",
                f"Finding 3's effect over all pairs: {pooled}; above 0: the longer warm-up is less sensitive",
                f"{FAILED_NOTE[0].upper() + FAILED_NOTE[1:]}: a pair in which one arm failed at every LR"]
    left = sorted(set(ctx.runs["scale"].unique().to_list()) - set(usable_scales(ctx)))
    if left:
        subtitle.append("Left out (fewer than 2 LRs where some run trained): "
                        + ", ".join(labels.get(s, s) for s in left))
    return alt.layer(*layers, data=_chart_data(data)).properties(
        title=alt.Title("Warm-up: paired effect on LR sensitivity", subtitle=subtitle, anchor="start"), width=380,
        height=260)


# ---- attention logits --------------------------------------------------------------------

def attn_logit_vs_step(curves: pl.DataFrame, runs: pl.DataFrame | None = None) -> alt.FacetChart:
    """Block 0's max attention logit over training (the paper's Fig. 1 reads block 0; the max
    over blocks when per-block columns are missing), one panel per (size, variant), one line
    per run coloured by LR (a point for a run with one finite value); a cross where a failed
    run's curve ends, at the top edge when it never logged a finite positive logit. Zero-layer
    models (no attention) are left out."""
    curves = _need(curves, "step", "lr", "variant", "scale", "seed", "run_id")
    metric, block = ("attn_logit_l0", "block 0") if "attn_logit_l0" in curves.columns and \
        curves["attn_logit_l0"].drop_nulls().len() else ("max_attn_logit", "max over blocks")
    if metric not in curves.columns:
        raise NoData("missing column(s): attn_logit_l0, max_attn_logit")
    skip = _no_attention(runs)
    cols = ["variant", "scale", "lr", "seed", "step", "run_id", "logit"]
    df = curves.filter(~pl.col("run_id").is_in(list(skip))).select(
        *cols[:-1], logit=pl.col(metric).cast(pl.Float64))
    failed = _failed_ids(runs) - skip
    df = _step_rows(df, failed, "logit", _positive(pl.col("logit")), _absent_runs(runs, failed, cols, "logit"))
    finite = df.filter(~pl.col("edge"))["logit"]
    if df.is_empty() or finite.is_empty():
        raise NoData(f"no positive {metric} values")
    ydom = _log_domain(finite)
    df = df.with_columns(logit=pl.when(pl.col("edge")).then(ydom[1]).otherwise(pl.col("logit")),
                         note=pl.when(pl.col("edge")).then(pl.lit(EDGE_NOTE)))
    labels = size_labels(runs if runs is not None and not runs.is_empty() and "scale" in runs.columns else curves)
    df = _lr_label(_with_size(df, labels))
    n_seeds = int(df.group_by("variant", "scale", "lr").agg(pl.col("seed").n_unique())["seed"].max())
    lr_dom = _lr_domain(df)
    base = alt.Chart().encode(x=alt.X("step:Q", title="Training step"),
                              y=_logy("logit:Q", "Max attention logit", ydom),
                              color=_colour("lr_label:N", "Peak LR", lr_dom))
    tooltip = ["variant", "size", "lr", "seed", "step", "logit", "note"]
    chart = alt.layer(*_step_marks(base, df, n_seeds, "lr_label", lr_dom, tooltip),
                      data=_chart_data(df)).properties(**STEP_PANEL)
    sizes = [v for v in labels.values() if v in set(df["size"].to_list())]
    header = alt.Header(labelAngle=0, labelOrient="right", labelAlign="left")
    subtitle = [f"One line per run ({_seeds_text(n_seeds)}), a point for a run with one finite value; "
                f"{FAILED_NOTE} where its curve ends; {EDGE_TEXT}",
                "Points and crosses of different LRs at one step are offset sideways so none hides another"]
    return chart.facet(row=alt.Row("size:N", title=None, sort=sizes, header=header),
                       column=alt.Column("variant:N", title="Variant")).properties(
        title=alt.Title(f"Attention-logit growth during training: the max attention logit of {block}",
                        subtitle=subtitle))


def _edge_runs(df: pl.DataFrame, value: str, domain: list[float]) -> pl.DataFrame:
    """Rows whose `value` is not drawable on a log axis: a failed run's moves to the domain's
    top edge (a cross; `note` says so), a trained run's is dropped (it logged nothing: no
    attention in a zero-layer model, an old run without the column)."""
    ok = _positive(pl.col(value))
    return (df.filter(ok | pl.col("failed"))
            .with_columns(note=pl.when(ok).then(pl.lit(None, pl.String)).otherwise(pl.lit(EDGE_NOTE)),
                          **{value: pl.when(ok).then(pl.col(value)).otherwise(domain[1])}))


def attn_logit_vs_lr(runs: pl.DataFrame, threshold: float = LOGIT_THRESHOLD) -> alt.FacetChart:
    """Max attention logit at the probe step vs LR per variant, one colour per size: every run
    (crosses for failed runs; at the top edge when it has no finite logit), a line through the
    geometric mean over the seeds with a logit, the threshold."""
    runs = scored(_need(runs, "lr", "scale", "variant", "init_loss"))
    runs = runs.filter(~pl.col("run_id").is_in(list(_no_attention(runs)))) if "run_id" in runs.columns else runs
    labels = size_labels(runs)
    df = _with_size(runs, labels).select(
        "variant", "size", "lr", "failed", col(runs, "seed", pl.Int64).alias("seed"),
        col(runs, "run_id", pl.String).alias("run_id"),
        logit=pl.coalesce(pl.when(_positive(col(runs, "max_attn_logit_at_probe")))
                          .then(col(runs, "max_attn_logit_at_probe")), col(runs, "max_attn_logit")))
    ok = df.filter(_positive(pl.col("logit")))
    if ok.is_empty() and not df["failed"].any():
        raise NoData("no attention-logit values")
    ydom = _log_domain(pl.concat([ok["logit"], pl.Series([float(threshold)])]))
    n_seeds, opacity = _seed_note(runs)
    mean = ok.group_by("variant", "size", "lr").agg(logit=10 ** pl.col("logit").log10().mean())
    df = pl.concat([_edge_runs(df, "logit", ydom).with_columns(_outcome_col(), kind=pl.lit("run")).drop("failed"),
                    mean.with_columns(kind=pl.lit("mean"))], how="diagonal_relaxed").with_columns(
        threshold=pl.lit(float(threshold))).sort("variant", "size", "lr")
    sizes = list(labels.values())
    base = alt.Chart().encode(x=_lr_x(df), y=_logy("logit:Q", "Max attention logit at the probe step", ydom),
                              color=_colour("size:N", _size_title(labels), sizes))
    points = base.mark_point(size=55, filled=True, opacity=opacity).encode(
        shape=_run_shape(), tooltip=["variant", "size", "lr", "seed", "logit", "outcome", "note"]).transform_filter(
        alt.datum.kind == "run")
    chart = alt.layer(
        base.mark_line(opacity=0.8).transform_filter(alt.datum.kind == "mean"),
        *_dodged(points, "size", sizes),
        alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(y="mean(threshold):Q"),
        data=_chart_data(df),
    )
    return _facet(chart, "variant:N", "Variant", df["variant"].n_unique()).properties(
        title=alt.Title(f"Max attention logit vs learning rate (dashed: threshold {threshold:g})",
                        subtitle=[f"Line: {'geometric ' if n_seeds > 1 else ''}{_mean_text(n_seeds)}; points: each "
                                  f"run; {FAILED_NOTE}; {EDGE_TEXT}",
                                  "Runs of different sizes at one LR are offset sideways so none hides another"]))


# ---- output logits (finding 2) -----------------------------------------------------------

LOGZ_PANELS = (  # (column in the step table, axis title); the paper's Fig. 4 plots the first
    ("output_logit_mean", "Output-logit mean"),
    ("logz_rms", "RMS log Z over tokens (nats)"),
    ("loss", "Training loss (nats)"),
)


def logz_vs_step(curves: pl.DataFrame, runs: pl.DataFrame | None = None) -> alt.VConcatChart:
    """Finding 2 over training at the largest size: the output-logit mean (what the paper's
    Fig. 4 plots), the RMS over tokens of log Z (sqrt of the unscaled z-loss) and the training
    loss, one column per variant, one line per run coloured by LR (a point for a run with one
    finite value), a cross where a failed run's curve ends (at the top edge when the run has
    no finite value in that row)."""
    curves = _need(curves, "step", "lr", "variant", "scale", "seed", "run_id")
    scale = _largest_scale(curves, runs)
    df = curves.filter(pl.col("scale") == scale)
    z = col(df, "z_loss")
    cols = {"output_logit_mean": col(df, "output_logit_mean"),
            "logz_rms": pl.when(z.is_finite() & (z >= 0)).then(z.sqrt()), "loss": col(df, "loss")}
    df = df.select("variant", "lr", "seed", "step", "run_id", **cols)
    present = [(c, t) for c, t in LOGZ_PANELS if df[c].is_finite().any()]
    if not present:
        raise NoData("no finite output_logit_mean, z_loss or loss values")
    runs_here = runs.filter(pl.col("scale") == scale) if runs is not None and "scale" in runs.columns else None
    failed = _failed_ids(runs_here)
    n_seeds = int(df.group_by("variant", "lr").agg(pl.col("seed").n_unique())["seed"].max())
    lr_dom = _lr_domain(df)
    colour = _colour("lr_label:N", "Peak LR", lr_dom)
    keys = ["variant", "lr", "seed", "step", "run_id", "value"]
    rows, clipped = [], False
    for column, title in present:
        part = _step_rows(df.select(*keys[:-1], value=pl.col(column)), failed, "value", pl.col("value").is_finite(),
                          _absent_runs(runs_here, failed, keys, "value"))
        drawn = part.filter(~pl.col("edge"))
        # The axis fits the runs that trained: a blown-up run would flatten the drift the
        # finding is about; it is drawn at the axis edge and its cross marks it.
        trained = drawn.filter(~pl.col("run_id").is_in(list(failed)))
        ref = trained if trained.height else drawn
        lo, hi = float(ref["value"].min()), float(ref["value"].max())
        pad = max(0.0, MIN_STEP_SPAN - (hi - lo)) / 2
        clipped |= bool(((drawn["value"] < lo - pad) | (drawn["value"] > hi + pad)).any())
        part = _lr_label(part.with_columns(value=pl.when(pl.col("edge")).then(hi + pad).otherwise(pl.col("value")),
                                           note=pl.when(pl.col("edge")).then(pl.lit(EDGE_NOTE))))
        base = alt.Chart().encode(x=alt.X("step:Q", title="Training step"),
                                  y=alt.Y("value:Q", title=title,
                                          scale=alt.Scale(domain=[lo - pad, hi + pad], nice=True, clamp=True)),
                                  color=colour)
        layer = alt.layer(*_step_marks(base, part, n_seeds, "lr_label", lr_dom,
                                       ["variant", "lr_label", "seed", "step", "value", "note"]),
                          data=_chart_data(part)).properties(**STEP_PANEL)
        rows.append(layer.facet(column=alt.Column("variant:N", title="Variant")))
    label = size_labels(runs if runs is not None and not runs.is_empty() and "scale" in runs.columns else curves)
    missing = [t for c, t in LOGZ_PANELS if (c, t) not in present]
    subtitle = [f"{label.get(scale, scale)}; one line per run ({_seeds_text(n_seeds)}), a point for a run with one "
                f"finite value; {FAILED_NOTE} where its curve ends; {EDGE_TEXT}",
                f"Each row has its own y axis, at least {MIN_STEP_SPAN:g} nat tall"]
    if clipped:
        subtitle[1] += "; the axes fit the runs that trained, and failed runs beyond them are drawn at the edge"
    if missing:
        subtitle.append("Not logged by these runs: " + ", ".join(missing))
    return alt.vconcat(*rows).properties(title=alt.Title(
        "Output-logit divergence: output-logit mean, RMS log Z and loss during training", subtitle=subtitle))


# ---- forecast (finding 8) ----------------------------------------------------------------

def _first(d: dict | None, *keys: str) -> Any:
    for k in keys:
        if isinstance(d, dict) and d.get(k) is not None:
            return d[k]
    return None


def persistence_score(forecast: dict) -> float | None:
    """The no-skill baseline's backtest score, if forecast.json has one."""
    p = forecast.get("persistence")
    if isinstance(p, (int, float)) and not isinstance(p, bool):
        return float(p)
    v = _first(p, "score") if isinstance(p, dict) else None
    v = v if v is not None else _first(forecast, "persistence_score", "baseline_score")
    return float(v) if isinstance(v, (int, float)) else None


def _log10_error(e: dict) -> float | None:
    """|log10(predicted / observed)| of one backtest LR: forecast.json's own, else computed."""
    v = _first(e, "log10_error", "abs_log10_error")
    if isinstance(v, (int, float)) and math.isfinite(v):
        return abs(float(v))
    p, o = e.get("predicted"), e.get("observed_max_logit")
    if not (_pos(p) and _pos(o)):
        return None
    return abs(math.log10(p / o))


def _persistence_log10_error(e: dict) -> float | None:
    """|log10 error| of the persistence baseline at one backtest LR, if forecast.json has it."""
    p = e.get("persistence")
    v = _first(p, "log10_error", "abs_log10_error") if isinstance(p, dict) else None
    v = v if v is not None else _first(e, "persistence_log10_error")
    return abs(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.median(xs)) if xs else None


def forecast_chart(forecast: dict) -> alt.LayerChart:
    """Backtest of the attention-logit forecast: the fit on the smaller sizes with its band,
    drawn up to the held-out size only; every run (a cross when it failed); the prediction at
    the held-out size with its interval (an arrow when it lies outside the data's range)."""
    bt = (forecast or {}).get("backtest") or []
    if not bt:
        raise NoData(f"no backtest (status: {(forecast or {}).get('status')}, "
                     f"backtest: {(forecast or {}).get('backtest_status')})")
    if not _pos(forecast.get("held_out_params")):
        raise NoData("the backtest names no held-out size")
    held = float(forecast["held_out_params"])
    threshold = float(forecast["threshold"]) if _pos(forecast.get("threshold")) else LOGIT_THRESHOLD
    lrs = sorted({e["lr"] for e in bt})
    domain_lr = [f"{v:g}" for v in lrs]
    dodge = {f"{v:g}": (i - (len(lrs) - 1) / 2) * 2 * DODGE_DECADES for i, v in enumerate(lrs)}
    points = []
    for f in forecast.get("fits", []):
        for p in f.get("points", []):
            # every run of the fits appears: a failed one without a finite logit at the top edge
            if _pos(p.get("params")) and (_pos(p.get("logit")) or p.get("failed")):
                lab = f"{f['lr']:g}"
                is_held = p["params"] >= held
                points.append({"variant": f["variant"], "lr_label": lab, "params": float(p["params"]),
                               "x": float(p["params"]) * 10 ** (dodge.get(lab, 0) if is_held else 0),
                               "logit": float(p["logit"]) if _pos(p.get("logit")) else None, "seed": p.get("seed"),
                               "outcome": "failed" if p.get("failed") else "trained",
                               "role": "held out" if is_held else "fitted"})
    observed = [p["logit"] for p in points if p["logit"] is not None] + [
        e["observed_max_logit"] for e in bt if _pos(e.get("observed_max_logit"))]
    if not observed:
        raise NoData("no positive attention logits in the forecast's fits")
    lo_y = min(min(observed), threshold) / 3
    hi_y = max(max(observed), threshold) * 3
    for p in points:
        p["note"] = None if p["logit"] is not None else EDGE_NOTE
        p["logit"] = hi_y if p["logit"] is None else p["logit"]
    clip = lambda v: None if v is None or not math.isfinite(v) else min(max(v, lo_y), hi_y)
    curve, preds = [], []
    for e in bt:
        lab = f"{e['lr']:g}"
        for c in e.get("curve", []):
            if _pos(c.get("params")) and c["params"] <= held * (1 + 1e-9) and _pos(c.get("fit")):
                curve.append({"variant": e["variant"], "lr_label": lab, "params": c["params"], "fit": clip(c["fit"]),
                              "lo": clip(c.get("lo")), "hi": clip(c.get("hi"))})
        pred, (plo, phi) = e.get("predicted"), (e.get("interval") or [None, None])[:2]
        if not _pos(pred):
            continue
        curve.append({"variant": e["variant"], "lr_label": lab, "params": held, "fit": clip(pred),
                      "lo": clip(plo), "hi": clip(phi)})
        err = _log10_error(e)
        outside = "above" if pred > hi_y else "below" if pred < lo_y else None
        preds.append({"variant": e["variant"], "lr_label": lab, "x": held * 10 ** dodge[lab], "predicted": pred,
                      "shown": clip(pred), "lo": clip(plo), "hi": clip(phi), "outside": outside,
                      "arrow": None if outside is None else ("▲ " if outside == "above" else "▼ ") + f"{pred:.2g}",
                      "log10_error": err, "correct": e.get("correct")})
    curves = pl.DataFrame(curve, schema={"variant": pl.String, "lr_label": pl.String, "params": pl.Float64,
                                         "fit": pl.Float64, "lo": pl.Float64, "hi": pl.Float64})
    pts = pl.DataFrame(points, infer_schema_length=None)
    pr = pl.DataFrame(preds, schema={"variant": pl.String, "lr_label": pl.String, "x": pl.Float64,
                                     "predicted": pl.Float64, "shown": pl.Float64, "lo": pl.Float64,
                                     "hi": pl.Float64, "outside": pl.String, "arrow": pl.String,
                                     "log10_error": pl.Float64, "correct": pl.Boolean})
    curves, pts, pr = _chart_data(curves), _chart_data(pts), _chart_data(pr)
    ydom = [lo_y, hi_y]
    y_title = "Max attention logit at the probe step"
    colour = _colour("lr_label:N", "Peak LR", domain_lr, legend=alt.Legend(symbolOpacity=1))
    sizes = sorted({p["params"] for p in points})
    x = lambda field: _params_x(sizes, field)  # one log scale shared by every layer
    many_variants = curves["variant"].n_unique() > 1
    layers = [
        alt.Chart(curves).mark_area(opacity=0.25).encode(
            x=x("params:Q"), y=_logy("lo:Q", y_title, ydom),
            y2="hi:Q", color=colour, detail="variant:N"),
        alt.Chart(curves).mark_line().encode(
            x=x("params:Q"), y=_logy("fit:Q", y_title, ydom),
            color=colour, detail="variant:N",
            **({"strokeDash": alt.StrokeDash("variant:N", title="Variant")} if many_variants else {})),
        alt.Chart(pr).mark_rule(strokeWidth=2).encode(x=x("x:Q"), y=_logy("lo:Q", y_title, ydom), y2="hi:Q",
                                                      color=colour),
        alt.Chart(pr).mark_point(shape="diamond", filled=False, size=150, strokeWidth=2).encode(
            x=x("x:Q"), y=_logy("shown:Q", y_title, ydom), color=colour,
            tooltip=["variant", "lr_label", "predicted", "lo", "hi", "log10_error", "correct"]),
        alt.Chart(pr).transform_filter(alt.datum.outside != None).mark_text(  # noqa: E711 (a Vega expression)
            fontSize=11, fontWeight="bold", dy=-10).encode(x=x("x:Q"), y=_logy("shown:Q", y_title, ydom),
                                                          text="arrow:N", color=colour),
        *_dodged(alt.Chart(pts).mark_point(filled=True, stroke="black", strokeWidth=0.6).encode(
            x=x("x:Q"), y=_logy("logit:Q", y_title, ydom), color=colour, shape=_run_shape(),
            size=alt.Size("role:N", title="Point", scale=alt.Scale(domain=["fitted", "held out"], range=[50, 150])),
            tooltip=["variant", "lr_label", "params", "seed", "logit", "outcome", "role", "note"]),
            "lr_label", domain_lr),
        alt.Chart(pl.DataFrame({"threshold": [threshold]})).mark_rule(strokeDash=[4, 4], color="gray").encode(
            y="threshold:Q"),
        alt.Chart(pl.DataFrame({"held": [held]})).mark_rule(strokeDash=[2, 2], color="black").encode(x=x("held:Q")),
    ]
    score, base_score = forecast.get("score"), persistence_score(forecast)
    title = "Forecast backtest: fit without the largest size"
    if score is not None:
        title += f" (score {score:.0%}; " + (f"persistence baseline {base_score:.0%})" if base_score is not None
                                             else "no persistence baseline in forecast.json)")
    lo_p, hi_p = (forecast.get("bootstrap") or {}).get("percentiles", [5, 95])
    widths = [h / l for l, h in zip(curves["lo"], curves["hi"]) if l and h]
    zero_band = bool(widths) and max(widths) < 1 + 1e-6
    subtitle = [f"Fit on the smaller sizes; dotted: the held-out size ({fmt_params(held)} params); dashed: "
                f"divergence threshold {threshold:g}",
                f"Band, and bar at the open diamond (the prediction): {lo_p:g}th-{hi_p:g}th percentile of a "
                "residual bootstrap", FAILED_NOTE[0].upper() + FAILED_NOTE[1:] + f"; {EDGE_TEXT}"]
    if zero_band:
        subtitle.append("The band has zero width: the fit passes through every point (no residual degrees of freedom)")
    err = _median([p["log10_error"] for p in preds])
    if err is not None:
        base_err = _median([_persistence_log10_error(e) for e in bt])
        subtitle.append(f"Median |log10(predicted / observed)| at the held-out size: {err:.2g} decades"
                        + (f" (persistence: {base_err:.2g})" if base_err is not None else "")
                        + ("; ▲/▼: prediction beyond the drawn range" if pr["outside"].drop_nulls().len() else ""))
    targets = forecast.get("targets") or {}
    if targets:
        subtitle.append("Forecasts for " + ", ".join(f"{k} ({fmt_params(v)} params)" for k, v in targets.items())
                        + ": forecast.csv (not drawn: beyond the data)")
    return alt.layer(*layers).properties(
        title=alt.Title(title, subtitle=subtitle), width=420, height=300)


# ---- kappa and AdamW epsilon -------------------------------------------------------------

KAPPA_REFERENCES = ("free model (no transplant)", "zero-layer (bigram) model")


def kappa_chart(runs: pl.DataFrame, sens: pl.DataFrame | None = None) -> alt.HConcatChart:
    """Finding 9: best final loss over the LR grid vs the transplant's kappa, one colour per
    size: each seed's best (a cross when every LR of it failed) and the mean over seeds. The
    free model (no transplant) and the zero-layer (bigram) model, as finding 9's check picks
    them (f09_kappa._variants), are reference lines at their mean over seeds, with each seed's
    value in a panel of their own; shaded: the free model + the onset band ("costs little")."""
    runs = _need(runs, "model.qk_kappa", "variant", "scale", "lr", "init_loss", "seed")
    ctx = _ctx(runs, sens)
    free, zero, kappas = f09_kappa._variants(ctx)
    if not kappas:
        raise NoData("no variant with model.qk_kappa > 0")
    labels = size_labels(ctx.runs)
    failed = {(v, sc, int(sd)) for v, sc, sd, f in _all_failed(ctx.runs, ["variant", "scale", "seed"]).iter_rows()
              if f}
    rows = []
    arms = [(k, v, None) for k, v in kappas.items()] + [(None, v, name) for v, name in zip((free, zero),
                                                                                           KAPPA_REFERENCES) if v]
    for k, v, ref in arms:
        for (scale, seed), (loss, lr) in f09_kappa.best_per_seed(ctx, v).items():
            rows.append({"variant": v, "scale": scale, "seed": seed, "kappa": k, "reference": ref,
                         "best_loss": loss, "best_lr": lr,
                         "outcome": "failed" if (v, scale, seed) in failed else "trained"})
    df = _with_size(pl.DataFrame(rows, schema={"variant": pl.String, "scale": pl.String, "seed": pl.Int64,
                                               "kappa": pl.Float64, "reference": pl.String,
                                               "best_loss": pl.Float64, "best_lr": pl.Float64,
                                               "outcome": pl.String}), labels)
    n_seeds, opacity = _seed_note(ctx.runs)
    mean = df.group_by("variant", "size", "kappa", "reference").agg(pl.col("best_loss").mean())
    data = _chart_data(pl.concat([df.with_columns(kind=pl.lit("seed")), mean.with_columns(kind=pl.lit("mean"))],
                                 how="diagonal_relaxed").sort("kappa"))
    sizes = list(labels.values())
    colour = _colour("size:N", _size_title(labels), sizes)
    y_title = "Best final loss over the LR grid (nats)"
    y = alt.Y("best_loss:Q", title=y_title, scale=alt.Scale(zero=False))
    refs = [r for r in KAPPA_REFERENCES if r in set(df["reference"].drop_nulls())]
    dash = alt.StrokeDash("reference:N", title="Reference (mean over seeds)", sort=refs,
                          scale=alt.Scale(domain=refs, range=[[6, 3], [2, 2]][:len(refs)]))
    is_kappa = alt.datum.kappa != None  # noqa: E711 (a Vega expression)
    base = alt.Chart().encode(
        x=_logx("kappa:Q", "kappa (target attention-logit scale)", sorted(kappas), fmt="~g"), y=y, color=colour)
    seeds = sorted(df["seed"].unique().to_list())
    points = base.mark_point(filled=True, size=60, opacity=opacity).encode(
        shape=_run_shape("Best run"), tooltip=["variant", "size", "seed", "kappa", "best_loss", "best_lr", "outcome"]
    ).transform_filter(is_kappa & (alt.datum.kind == "seed"))
    ref_mean = (alt.datum.kappa == None) & (alt.datum.kind == "mean")  # noqa: E711
    left = [base.mark_line().transform_filter(is_kappa & (alt.datum.kind == "mean")), *_dodged(points, "seed", seeds),
            alt.Chart().mark_rule(strokeWidth=1.5).encode(y=y, color=colour, strokeDash=dash, tooltip=[
                "reference", "size", alt.Tooltip("best_loss:Q", format=".4f")]).transform_filter(ref_mean)]
    if free:
        left.insert(0, alt.Chart().mark_rect(opacity=0.12).encode(
            y=alt.Y("best_loss:Q", title=y_title), y2="top:Q", color=colour).transform_filter(
            ref_mean & (alt.datum.reference == KAPPA_REFERENCES[0])).transform_calculate(
            top=f"datum.best_loss + {f09_kappa.ONSET_BAND}"))
    chart = alt.layer(*left, data=data).properties(width=340, height=260)
    if refs:  # each seed of the reference models, on the same loss axis
        right = alt.layer(*_dodged(alt.Chart().mark_point(filled=True, size=60, opacity=opacity).encode(
            x=alt.X("reference:N", title=None, sort=refs, axis=alt.Axis(labelAngle=-30, labelLimit=120)),
            y=alt.Y("best_loss:Q", title=None, scale=alt.Scale(zero=False)),
            color=colour, shape=_run_shape("Best run"),
            tooltip=["variant", "reference", "size", "seed", "best_loss", "best_lr", "outcome"]).transform_filter(
            (alt.datum.kappa == None) & (alt.datum.kind == "seed")), "seed", seeds),  # noqa: E711
            data=data).properties(width=90, height=260)
        chart = alt.hconcat(chart, right).resolve_scale(y="shared")
    subtitle = [f"Line: {_mean_text(n_seeds)}; points: each seed's best LR; cross: every LR of that seed failed",
                "Horizontal lines: the reference models' mean best loss (their seeds in the right panel); shaded: the "
                f"free model + {f09_kappa.ONSET_BAND:g} nats, the 'costs little' band of finding 9's onset check"]
    missing = [name for v, name in zip((free, zero), KAPPA_REFERENCES) if not v]
    if missing:
        subtitle.append("Not in this study: " + ", ".join(missing))
    return chart.properties(title=alt.Title("Loss vs logit transplant kappa", subtitle=subtitle, anchor="start"))


def _eps_runs(runs: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Finding 10's per-run table: the epsilon-study variants' runs with their final `metric`
    (column "value"; null where it is not finite and positive), size and epsilon. Failed runs
    are kept and marked; trained runs without a value (a zero-layer model logs none) and
    models without non-embedding parameters (nothing to place on the size axis) are left out."""
    runs = scored(_need(runs, metric, "non_embedding_params", "lr", "variant", "init_loss"))
    runs = runs.filter(pl.col("variant").is_in(eps_family(runs)))
    value = col(runs, metric)
    df = runs.select("variant", "lr", "scale", col(runs, "seed", pl.Int64).alias("seed"),
                     col(runs, "run_id", pl.String).alias("run_id"), "failed", _outcome_col(),
                     params=col(runs, "non_embedding_params"), value=pl.when(_positive(value)).then(value),
                     eps=col(runs, "optim.eps")).filter(_positive(pl.col("params")))
    if df.filter(pl.col("value").is_not_null() | pl.col("failed")).is_empty():
        raise NoData(f"no positive {metric} and no failed run")
    return df


def _eps_layers(df: pl.DataFrame, colour: alt.Color, y: alt.Y, domain: list[float], group: list[str],
                dodge: str, extra: list) -> list:
    """A mean line over the trained runs of each group, and every run (crosses for failed
    ones, at the top edge of `domain` without a value), offset sideways by the colour `dodge`."""
    n_seeds = int(df.group_by(group + ["scale"]).agg(pl.col("seed").n_unique())["seed"].max())
    mean = (df.filter((pl.col("outcome") == "trained") & pl.col("value").is_not_null()).group_by(group + ["scale"])
            .agg(pl.col("params").mean(), (10 ** pl.col("value").log10().mean()).alias("value")))
    runs = _edge_runs(df, "value", domain).drop("failed")
    data = pl.concat([runs.with_columns(kind=pl.lit("run")), mean.with_columns(kind=pl.lit("mean"))],
                     how="diagonal_relaxed").sort(group + ["params"])
    x = _params_x(df["params"].to_list(), "params:Q")
    base = alt.Chart().encode(x=x, y=y, color=colour)
    points = base.mark_point(filled=True, size=45, opacity=SEED_OPACITY if n_seeds > 1 else 0.9).encode(
        shape=_run_shape(), tooltip=["variant", "scale", "lr", "seed", "value", "eps", "outcome", "note"]
    ).transform_filter(alt.datum.kind == "run")
    return [alt.layer(
        base.mark_line().transform_filter(alt.datum.kind == "mean"),
        *_dodged(points, dodge, data[dodge].unique(maintain_order=True).sort().to_list()),
        *extra, data=_chart_data(data)), n_seeds]


def grad_rms_vs_size(runs: pl.DataFrame) -> alt.FacetChart:
    """Final gradient RMS vs size per LR, one panel per variant, with AdamW epsilon dashed:
    every run (crosses for failed ones; at the top edge without a finite value) and the
    geometric mean over the seeds that trained."""
    df = _lr_label(_eps_runs(runs, "grad_rms_final"))
    colour = _colour("lr_label:N", "Peak LR", _lr_domain(df))
    eps_rule = alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(y="mean(eps):Q")
    ydom = _log_domain(pl.concat([df["value"], df["eps"]]))
    y = _logy("value:Q", "Final gradient RMS", ydom)
    chart, n_seeds = _eps_layers(df, colour, y, ydom, ["variant", "lr_label", "lr"], "lr_label", [eps_rule])
    return _facet(chart, "variant:N", "Variant", df["variant"].n_unique()).properties(
        title=alt.Title("Gradient RMS vs model size (dashed: AdamW epsilon)",
                        subtitle=f"Line: geometric mean over the runs that trained ({_seeds_text(n_seeds)}); "
                                 f"points: each run; {FAILED_NOTE}; {EDGE_TEXT}"))


def update_rms(runs: pl.DataFrame) -> alt.FacetChart:
    """Final update RMS (update / LR) vs size per variant, one panel per LR (finding 10):
    every run (crosses for failed ones; at the top edge without a finite value) and the
    geometric mean over the seeds that trained."""
    df = _eps_runs(runs, "update_rms_final").with_columns(
        label=pl.format("{} (eps {})", pl.col("variant"), pl.col("eps").map_elements(
            lambda v: "?" if v is None else f"{v:g}", return_dtype=pl.String)))
    df = _lr_label(df)
    labels = df["label"].unique(maintain_order=True).to_list()
    values = df["value"].drop_nulls()
    ydom = _log_domain(values) if values.len() else [0.1, 10.0]  # every run failed: only top-edge crosses
    chart, n_seeds = _eps_layers(df, _colour("label:N", "Variant", labels),
                                 _logy("value:Q", "Final update RMS (update / LR)", ydom), ydom,
                                 ["variant", "label", "lr_label", "lr"], "label", [])
    return chart.properties(**PANEL).facet(
        facet=alt.Facet("lr_label:N", title="Peak LR", sort=_lr_domain(df)), columns=3).properties(
        title=alt.Title("Update RMS vs model size",
                        subtitle=f"Line: geometric mean over the runs that trained ({_seeds_text(n_seeds)}); "
                                 f"points: each run; {FAILED_NOTE}; {EDGE_TEXT}"))


# ---- rendering ---------------------------------------------------------------------------

TABLES = ("runs", "curves", "sensitivity", "forecast")


def read_tables(paths: Mapping[str, str | Path]) -> dict[str, Any]:
    """The tables the builders take, read from `paths` (the figure rule's inputs): `runs`,
    `curves` and `sensitivity` (parquet, as frames) and `forecast` (JSON, as a dict). A table
    not given is empty (its figures become placeholders). Raises ValueError for a key that is
    not a table, so a rule cannot declare an input no figure reads."""
    unknown = sorted(set(paths) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown figure tables {unknown} (expected some of: {', '.join(TABLES)})")
    tables: dict[str, Any] = {"forecast": {}, **{k: pl.DataFrame() for k in TABLES if k != "forecast"}}
    for key, path in paths.items():
        tables[key] = json.loads(Path(path).read_text()) if key == "forecast" else pl.read_parquet(path)
    return tables


def _threshold(t: dict) -> float:
    v = (t.get("forecast") or {}).get("threshold")
    return float(v) if _pos(v) else LOGIT_THRESHOLD


BUILDERS: dict[str, Callable[[dict], Any]] = {
    "lr_vs_loss": lambda t: lr_vs_loss(t["runs"]),
    "sensitivity_vs_size": lambda t: sensitivity_vs_size(t["sensitivity"], t["runs"]),
    "best_lr_vs_size": lambda t: best_lr_vs_size(t["runs"], t["sensitivity"]),
    "warmup_effect": lambda t: warmup_effect(t["runs"], t["sensitivity"]),
    "attn_logit_vs_step": lambda t: attn_logit_vs_step(t["curves"], t["runs"]),
    "attn_logit_vs_lr": lambda t: attn_logit_vs_lr(t["runs"], _threshold(t)),
    "logz_vs_step": lambda t: logz_vs_step(t["curves"], t["runs"]),
    "forecast": lambda t: forecast_chart(t["forecast"]),
    "kappa": lambda t: kappa_chart(t["runs"], t["sensitivity"]),
    "grad_rms_vs_size": lambda t: grad_rms_vs_size(t["runs"]),
    "update_rms": lambda t: update_rms(t["runs"]),
}


def build(name: str, tables: dict[str, Any]) -> Any:
    """The chart `name` for these tables, or a placeholder naming what is missing."""
    try:
        return BUILDERS[name](tables)
    except NoData as e:
        return placeholder(name, str(e))


def save_chart(chart: Any, outputs: Mapping[str, str | Path]) -> list[Path]:
    """Write the chart to each path in `outputs`, keyed by format: `png`, `svg` or `html`
    (HTML with Vega inlined: opens offline). Returns the paths in the order given."""
    out = []
    for fmt, path in outputs.items():
        path = Path(path)
        kw: dict[str, Any] = {"inline": True, "embed_options": {"actions": False}} if fmt == "html" else {}
        if fmt == "png":
            kw["scale_factor"] = 2  # crisp on high-DPI screens and in the PDF report
        atomic_write(path, lambda p, fmt=fmt, kw=kw: chart.save(str(p), format=fmt, **kw))
        out.append(path)
    return out


def render_figure(name: str, tables: Mapping[str, str | Path], outputs: Mapping[str, str | Path]) -> list[Path]:
    """One figure of a study, drawn from the table files in `tables` (see read_tables) and
    written to `outputs` (format -> path, see save_chart); a placeholder names missing data.
    Raises ValueError for an unknown figure name or table key."""
    if name not in BUILDERS:
        raise ValueError(f"unknown figure {name!r} (expected one of: {', '.join(BUILDERS)})")
    chart = build(name, read_tables(tables))
    for path in outputs.values():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_chart(chart, outputs)
