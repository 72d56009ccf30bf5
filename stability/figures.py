"""The study figures, as Altair charts saved to PNG, SVG and self-contained (offline) HTML.

One function per figure kind; each takes a study's tables (runs, curves, sensitivity,
forecast) and returns a chart. `figures_for(findings)` names the figures a study needs,
`render_study(study_dir, findings, out_dir)` writes them all.

Conventions every figure keeps: model sizes are labelled by non-embedding parameters
("25k params"), never by scale names; every seed's run is drawn (faint when there are
several) beside the mean over seeds; every failed run (diverged, non-finite or stalled:
sensitivity.with_outcome) is a cross; colours are the Okabe-Ito palette (safe for the common
colour-vision deficiencies); axes are log-scaled as in the paper and carry their units.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import altair as alt
import numpy as np
import polars as pl

from .analysis import roles
from .analysis.fits import LOGIT_THRESHOLD
from .analysis.io import atomic_write
from .analysis.sensitivity import col, per_seed_sensitivity, with_outcome
from .figure_names import figures_for  # the finding -> figures table, shared with the Snakefile

# Okabe-Ito, ordered so the first six are far apart in hue and lightness (sky blue, close to
# blue, and the low-contrast yellow come last).
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#000000", "#D55E00", "#56B4E9", "#F0E442"]
FORMATS = ("png", "svg", "html")
MAX_POINTS_PER_CURVE = 60  # per run in step plots: enough for the shape, quick to render
PANEL = {"width": 220, "height": 170}
STEP_PANEL = {"width": 200, "height": 120}
SEED_OPACITY = 0.35  # each seed's own run, when a mean over several seeds is drawn beside it
DODGE_DECADES = 0.012  # horizontal offset between variants at one size, so equal values stay visible
LOSS_PAD = 0.05  # nats of room around the loss axis
MIN_STEP_SPAN = 1.0  # nats: the least y range of finding 2's step panels, so a drift far below the
# check's scale (nats) cannot fill a panel

PARAMS_TITLE = "Non-embedding parameters"
LR_TITLE = "Peak learning rate"
RUN_SHAPE_DOMAIN, RUN_SHAPE_RANGE = ["trained", "failed"], ["circle", "cross"]
FAILED_NOTE = "cross: a failed run (diverged, non-finite or stalled)"
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
    """Parameters axis with a tick at every model size of the study."""
    return _logx(field, PARAMS_TITLE, sorted({float(v) for v in values if v is not None}))


def _lr_x(df: pl.DataFrame, field: str = "lr:Q") -> alt.X:
    return _logx(field, LR_TITLE, sorted(df["lr"].unique().to_list()), fmt="~g")


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
    """[min / pad, max * pad] of the positive values: a log axis fitted to the data."""
    v = values.filter(values > 0)
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
    return set(with_outcome(runs).filter(pl.col("failed"))["run_id"].to_list())


def _last_points(df: pl.DataFrame, failed: set[str], value: str) -> pl.DataFrame:
    """The last logged value of each failed run: where a step curve ends, a cross."""
    return (df.filter(pl.col("run_id").is_in(list(failed)) & pl.col(value).is_not_null())
            .sort("step").group_by("run_id", maintain_order=True).last().select(df.columns))


def _largest_scale(curves: pl.DataFrame, runs: pl.DataFrame | None) -> str:
    ref = runs if runs is not None and not runs.is_empty() and "scale" in runs.columns else curves
    labels = size_labels(ref)
    return list(labels)[-1] if labels else str(curves["scale"].max())


def eps_family(runs: pl.DataFrame) -> list[str]:
    """Variants that differ only in optim.eps (finding 10's comparison), else every variant."""
    configs = roles.variant_configs(runs)
    groups: dict[tuple, list[str]] = {}
    for v, cfg in configs.items():
        groups.setdefault(tuple(sorted((k, str(x)) for k, x in cfg.items() if k != "optim.eps")), []).append(v)
    for members in groups.values():
        if len({configs[v].get("optim.eps") for v in members}) >= 2:
            return members
    return list(configs)


def placeholder(name: str, reason: str) -> alt.Chart:
    df = pl.DataFrame({"text": [f"No data for this figure: {reason}"]})
    return alt.Chart(df).mark_text(fontSize=14).encode(text="text:N").properties(
        title=name, width=420, height=80)


# ---- loss and sensitivity ----------------------------------------------------------------

def lr_vs_loss(runs: pl.DataFrame) -> alt.FacetChart:
    """Final loss vs peak LR per variant (panels), one colour per model size: every seed's run
    (a cross when it failed, drawn at loss_0 as the sensitivity metric counts it) and the mean
    over seeds as a line. The y axis runs from the best loss to loss_0 in every panel."""
    runs = with_outcome(_need(runs, "lr", "scale", "variant", "init_loss", "seed"))
    labels = size_labels(runs)
    n_seeds, opacity = _seed_note(runs)
    per_run = _with_size(runs, labels).select("variant", "size", "scale", "lr", "seed", "init_loss",
                                              loss="loss_capped", failed="failed").with_columns(_outcome_col())
    mean = (per_run.group_by("variant", "size", "lr").agg(pl.col("loss").mean(), pl.col("failed").all())
            .with_columns(_outcome_col()))
    df = pl.concat([per_run.select("variant", "size", "lr", "loss", "outcome", pl.col("seed").cast(pl.Int64),
                                   kind=pl.lit("run")),
                    mean.select("variant", "size", "lr", "loss", "outcome", seed=pl.lit(None, pl.Int64),
                                kind=pl.lit("mean"))]).sort("variant", "size", "lr")
    y = alt.Y("loss:Q", title="Final validation loss (nats)",
              scale=alt.Scale(domain=_loss_domain(per_run["loss"], per_run["init_loss"]), nice=False))
    colour = _colour("size:N", _size_title(labels), list(labels.values()))
    base = alt.Chart().encode(x=_lr_x(runs), y=y, color=colour)
    layers = [
        base.mark_line(opacity=0.8).transform_filter(alt.datum.kind == "mean"),
        base.mark_point(size=55, filled=True, opacity=opacity).encode(
            shape=_run_shape(), tooltip=["variant", "size", "lr", "seed", alt.Tooltip("loss:Q", format=".4f"),
                                         "outcome"]).transform_filter(alt.datum.kind == "run"),
    ]
    per_panel = mean.group_by("variant").len()["len"].max()
    if per_panel <= 4:  # few points: print the values, so equal-looking ones can be compared
        layers.append(base.mark_text(dx=8, align="left", fontSize=11).encode(
            text=alt.Text("loss:Q", format=".3f")).transform_filter(alt.datum.kind == "mean"))
    chart = alt.layer(*layers, data=df)
    subtitle = [f"Line: {_mean_text(n_seeds)}; points: each run; {FAILED_NOTE}, drawn at its initial loss "
                "as the LR-sensitivity metric counts it", "The y axis runs from the best loss to the initial loss"]
    return _facet(chart, "variant:N", "Variant", df["variant"].n_unique()).properties(
        title=alt.Title("Final loss vs learning rate", subtitle=subtitle))


def _ladders(runs: pl.DataFrame, labels: dict[str, str]) -> dict[str, list[str]] | None:
    """For a one-variant study that mixes width and depth ladders (finding 5): {"width ladder
    (L layers)": scales, "depth ladder (width d)": scales} from the smallest model; else None."""
    if runs["variant"].n_unique() != 1 or not {"model.n_layers", "model.d_model"} <= set(runs.columns):
        return None
    g = runs.group_by("scale").agg(col(runs, "model.n_layers").first().alias("L"),
                                   col(runs, "model.d_model").first().alias("d"))
    shapes = {s: (d, L) for s, L, d in zip(g["scale"], g["L"], g["d"])}
    if not _shapes_conflict(shapes):
        return None
    base = next(s for s in labels if s in shapes)
    d0, L0 = shapes[base]
    return {f"width ladder ({L0:g} layers)": [s for s in labels if shapes.get(s, (None, None))[1] == L0],
            f"depth ladder (width {d0:g})": [s for s in labels if shapes.get(s, (None, None))[0] == d0]}


SENS_SETS = {"sensitivity": "over the full LR grid",
             "sensitivity_trainable": "over the LRs where some run of the study trained"}


def sensitivity_vs_size(sens: pl.DataFrame, runs: pl.DataFrame | None = None) -> alt.FacetChart:
    """LR sensitivity vs model size per variant: each seed's value (faint), the mean over seeds
    (line) and the min-max over seeds (bars); one panel per LR set (full grid, trainable LRs).
    A one-variant study of width and depth ladders draws one line per ladder."""
    if runs is None or runs.is_empty() or "init_loss" not in runs.columns:
        raise NoData("no runs to compute per-seed sensitivities from")
    seeds = per_seed_sensitivity(runs)
    if seeds.is_empty():
        raise NoData("no sensitivity values")
    labels = size_labels(runs)
    params = runs.group_by("scale").agg(col(runs, "non_embedding_params").mean().alias("params"))
    seeds = seeds.join(params, on="scale").drop_nulls("params")
    ladders = _ladders(runs, labels)
    if ladders:
        seeds = pl.concat([seeds.filter(pl.col("scale").is_in(members)).with_columns(variant=pl.lit(name))
                           for name, members in ladders.items()])
    long = seeds.unpivot(index=["variant", "scale", "seed", "params"], on=list(SENS_SETS),
                         variable_name="set", value_name="sens").drop_nulls("sens").with_columns(
        set=pl.col("set").replace_strict(SENS_SETS))
    if long.is_empty():
        raise NoData("no sensitivity values")
    variants = seeds["variant"].unique(maintain_order=True).to_list()
    long = _dodge(long, "variant", "params", variants)
    stats = long.group_by("variant", "scale", "set").agg(
        pl.col("x").first(), pl.col("params").first(), mean=pl.col("sens").mean(), lo=pl.col("sens").min(),
        hi=pl.col("sens").max(), n_seeds=pl.col("seed").n_unique())
    df = pl.concat([long.select("variant", "scale", "set", "x", "params", "seed", "sens", kind=pl.lit("seed")),
                    stats.select("variant", "scale", "set", "x", "params", pl.lit(None, pl.Int64).alias("seed"),
                                 pl.col("mean").alias("sens"), kind=pl.lit("mean"))], how="vertical_relaxed")
    df = df.join(stats.select("variant", "scale", "set", "lo", "hi", "n_seeds"), on=["variant", "scale", "set"])
    df = _with_size(df, labels).sort("variant", "set", "params")
    n_seeds = int(stats["n_seeds"].max())
    x = _params_x(df["params"].to_list())
    y_title = "LR sensitivity (nats)"
    colour = _colour("variant:N", "Ladder" if ladders else "Variant", variants)
    base = alt.Chart().encode(x=x, color=colour)
    mean_only = alt.datum.kind == "mean"
    layers = [
        base.mark_line().encode(y=alt.Y("sens:Q", title=y_title)).transform_filter(mean_only),
        base.mark_point(filled=True, size=60).encode(
            y=alt.Y("sens:Q", title=y_title), shape=_variant_shape("variant:N", "Ladder" if ladders else "Variant",
                                                                   variants),
            tooltip=["variant", "size", alt.Tooltip("sens:Q", title="mean", format=".4f"),
                     alt.Tooltip("lo:Q", format=".4f"), alt.Tooltip("hi:Q", format=".4f"), "n_seeds"]
        ).transform_filter(mean_only),
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
    subtitle = [f"Line: {_mean_text(n_seeds)}" + ("; bars: min-max over seeds; faint points: each seed"
                                                           if n_seeds > 1 else ""),
                "Variants at one size are offset sideways so equal values stay visible"]
    chart = alt.layer(*layers, data=df).properties(width=300, height=240)
    return chart.facet(column=alt.Column("set:N", title="LR sensitivity", sort=list(SENS_SETS.values()))).properties(
        title=alt.Title("LR sensitivity vs model size", subtitle=subtitle))


def best_lr_vs_size(sens: pl.DataFrame) -> alt.LayerChart:
    """Fitted optimal LR vs model size per variant (finding 6: muParam keeps it stable)."""
    df = _need(sens, "non_embedding_params", "best_lr_fit", "variant").drop_nulls(
        ["non_embedding_params", "best_lr_fit"])
    if df.is_empty():
        raise NoData("no optimal LR values")
    variants = df["variant"].unique(maintain_order=True).to_list()
    df = _dodge(df, "variant", "non_embedding_params", variants)
    base = alt.Chart(df).encode(x=_params_x(df["non_embedding_params"].to_list()),
                                y=_logy("best_lr_fit:Q", "Optimal peak LR (quadratic fit)",
                                        _log_domain(df["best_lr_fit"])),
                                color=_colour("variant:N", "Variant", variants))
    return alt.layer(base.mark_line(), base.mark_point(filled=True, size=60).encode(
        shape=_variant_shape("variant:N", "Variant", variants),
        tooltip=["variant", "scale", "non_embedding_params", "best_lr", "best_lr_fit", "n_seeds"])).properties(
        title=alt.Title("Optimal learning rate vs model size", subtitle="Fitted on the loss averaged over seeds"),
        width=360, height=260)


# ---- attention logits --------------------------------------------------------------------

def attn_logit_vs_step(curves: pl.DataFrame, runs: pl.DataFrame | None = None) -> alt.FacetChart:
    """Block 0's max attention logit over training (the paper's Fig. 1 reads block 0; the max
    over blocks when per-block columns are missing), one panel per (size, variant), one line
    per run coloured by LR; a cross where a failed run's curve ends."""
    curves = _need(curves, "step", "lr", "variant", "scale", "seed", "run_id")
    metric, block = ("attn_logit_l0", "block 0") if "attn_logit_l0" in curves.columns and \
        curves["attn_logit_l0"].drop_nulls().len() else ("max_attn_logit", "max over blocks")
    if metric not in curves.columns:
        raise NoData("missing column(s): attn_logit_l0, max_attn_logit")
    df = curves.filter(pl.col(metric).is_not_null() & pl.col(metric).is_finite() & (pl.col(metric) > 0))
    df = _thin(df.select("variant", "scale", "lr", "seed", "step", "run_id", logit=pl.col(metric)))
    if df.is_empty():
        raise NoData(f"no positive {metric} values")
    labels = size_labels(runs if runs is not None and not runs.is_empty() and "scale" in runs.columns else curves)
    df = _lr_label(_with_size(df, labels))
    ends = _last_points(df, _failed_ids(runs), "logit").with_columns(outcome=pl.lit("failed"))
    df = pl.concat([df.with_columns(kind=pl.lit("curve"), outcome=pl.lit("trained")),
                    ends.with_columns(kind=pl.lit("end"))], how="diagonal_relaxed")
    n_seeds = int(df.group_by("variant", "scale", "lr").agg(pl.col("seed").n_unique())["seed"].max())
    base = alt.Chart().encode(x=alt.X("step:Q", title="Training step"),
                              y=_logy("logit:Q", "Max attention logit", _log_domain(df["logit"])),
                              color=_colour("lr_label:N", "Peak LR", _lr_domain(df)))
    chart = alt.layer(
        base.mark_line(opacity=0.6 if n_seeds > 1 else 0.9).encode(detail="run_id:N").transform_filter(
            alt.datum.kind == "curve"),
        base.mark_point(size=70, filled=True, opacity=1, shape="cross").encode(
            tooltip=["variant", "size", "lr", "seed", "step", "logit"]).transform_filter(alt.datum.kind == "end"),
        data=df,
    ).properties(**STEP_PANEL)
    sizes = [v for v in labels.values() if v in set(df["size"].to_list())]
    header = alt.Header(labelAngle=0, labelOrient="right", labelAlign="left")
    return chart.facet(row=alt.Row("size:N", title=None, sort=sizes, header=header),
                       column=alt.Column("variant:N", title="Variant")).properties(
        title=alt.Title(f"Attention-logit growth during training: the max attention logit of {block}",
                        subtitle=f"One line per run ({_seeds_text(n_seeds)}); {FAILED_NOTE} where its curve ends"))


def attn_logit_vs_lr(runs: pl.DataFrame, threshold: float = LOGIT_THRESHOLD) -> alt.FacetChart:
    """Max attention logit at the probe step vs LR per variant, one colour per size: every run
    (crosses for failed runs), a line through the geometric mean over seeds, the threshold."""
    runs = with_outcome(_need(runs, "lr", "scale", "variant", "init_loss"))
    labels = size_labels(runs)
    df = _with_size(runs, labels).select("variant", "size", "lr", "failed", col(runs, "seed", pl.Int64).alias("seed"),
                                         logit=pl.coalesce(col(runs, "max_attn_logit_at_probe"),
                                                           col(runs, "max_attn_logit"))).filter(
        pl.col("logit").is_not_null() & pl.col("logit").is_finite() & (pl.col("logit") > 0))
    if df.is_empty():
        raise NoData("no attention-logit values")
    n_seeds, opacity = _seed_note(runs)
    mean = df.group_by("variant", "size", "lr").agg(logit=10 ** pl.col("logit").log10().mean())
    df = pl.concat([df.with_columns(_outcome_col(), kind=pl.lit("run")).drop("failed"),
                    mean.with_columns(kind=pl.lit("mean"))], how="diagonal_relaxed").with_columns(
        threshold=pl.lit(threshold)).sort("variant", "size", "lr")
    base = alt.Chart().encode(x=_lr_x(df), y=_logy("logit:Q", "Max attention logit at the probe step",
                                                   _log_domain(pl.concat([df["logit"], df["threshold"]]))),
                              color=_colour("size:N", _size_title(labels), list(labels.values())))
    chart = alt.layer(
        base.mark_line(opacity=0.8).transform_filter(alt.datum.kind == "mean"),
        base.mark_point(size=55, filled=True, opacity=opacity).encode(
            shape=_run_shape(), tooltip=["variant", "size", "lr", "seed", "logit", "outcome"]).transform_filter(
            alt.datum.kind == "run"),
        alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(y="mean(threshold):Q"),
        data=df,
    )
    return _facet(chart, "variant:N", "Variant", df["variant"].n_unique()).properties(
        title=alt.Title(f"Max attention logit vs learning rate (dashed: threshold {threshold:g})",
                        subtitle=f"Line: {'geometric ' if n_seeds > 1 else ''}{_mean_text(n_seeds)}; points: each run; "
                                 f"{FAILED_NOTE}"))


# ---- output logits (finding 2) -----------------------------------------------------------

LOGZ_PANELS = (  # (column in the step table, axis title); the paper's Fig. 4 plots the first
    ("output_logit_mean", "Output-logit mean"),
    ("logz_rms", "RMS log Z over tokens (nats)"),
    ("loss", "Training loss (nats)"),
)


def logz_vs_step(curves: pl.DataFrame, runs: pl.DataFrame | None = None) -> alt.VConcatChart:
    """Finding 2 over training at the largest size: the output-logit mean (what the paper's
    Fig. 4 plots), the RMS over tokens of log Z (sqrt of the unscaled z-loss) and the training
    loss, one column per variant, one line per run coloured by LR, a cross where a failed
    run's curve ends."""
    curves = _need(curves, "step", "lr", "variant", "scale", "seed", "run_id")
    scale = _largest_scale(curves, runs)
    df = curves.filter(pl.col("scale") == scale)
    cols = {"output_logit_mean": col(df, "output_logit_mean"),
            "logz_rms": pl.when(col(df, "z_loss") >= 0).then(col(df, "z_loss").sqrt()), "loss": col(df, "loss")}
    df = _thin(df.select("variant", "lr", "seed", "step", "run_id", **cols))
    present = [(c, t) for c, t in LOGZ_PANELS if df[c].is_finite().any()]
    if not present:
        raise NoData("no finite output_logit_mean, z_loss or loss values")
    df = _lr_label(df)
    failed = _failed_ids(runs)
    n_seeds = int(df.group_by("variant", "lr").agg(pl.col("seed").n_unique())["seed"].max())
    colour = _colour("lr_label:N", "Peak LR", _lr_domain(df))
    rows, clipped = [], False
    for column, title in present:
        part = df.select("variant", "lr_label", "seed", "step", "run_id", value=pl.col(column)).filter(
            pl.col("value").is_finite())
        ends = _last_points(part, failed, "value")
        part = pl.concat([part.with_columns(kind=pl.lit("curve")), ends.with_columns(kind=pl.lit("end"))])
        # The axis fits the runs that trained: a blown-up run would flatten the drift the
        # finding is about; it is drawn at the axis edge and its cross marks it.
        trained = part.filter(~pl.col("run_id").is_in(list(failed)))
        ref = trained if trained.height else part
        lo, hi = float(ref["value"].min()), float(ref["value"].max())
        pad = max(0.0, MIN_STEP_SPAN - (hi - lo)) / 2
        clipped |= bool(((part["value"] < lo - pad) | (part["value"] > hi + pad)).any())
        base = alt.Chart().encode(x=alt.X("step:Q", title="Training step"),
                                  y=alt.Y("value:Q", title=title,
                                          scale=alt.Scale(domain=[lo - pad, hi + pad], nice=True, clamp=True)),
                                  color=colour)
        layer = alt.layer(
            base.mark_line(opacity=0.6 if n_seeds > 1 else 0.9).encode(detail="run_id:N").transform_filter(
                alt.datum.kind == "curve"),
            base.mark_point(size=70, filled=True, opacity=1, shape="cross").encode(
                tooltip=["variant", "lr_label", "seed", "step", "value"]).transform_filter(alt.datum.kind == "end"),
            data=part,
        ).properties(**STEP_PANEL)
        rows.append(layer.facet(column=alt.Column("variant:N", title="Variant")))
    label = size_labels(runs if runs is not None and not runs.is_empty() and "scale" in runs.columns else curves)
    missing = [t for c, t in LOGZ_PANELS if (c, t) not in present]
    subtitle = [f"{label.get(scale, scale)}; one line per run ({_seeds_text(n_seeds)}); {FAILED_NOTE} where "
                "its curve ends", f"Each row has its own y axis, at least {MIN_STEP_SPAN:g} nat tall"]
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
    if isinstance(v, (int, float)):
        return abs(float(v))
    p, o = e.get("predicted"), e.get("observed_max_logit")
    if p is None or o is None or not (p > 0 and o > 0):
        return None
    return abs(math.log10(p / o))


def _persistence_log10_error(e: dict) -> float | None:
    """|log10 error| of the persistence baseline at one backtest LR, if forecast.json has it."""
    p = e.get("persistence")
    v = _first(p, "log10_error", "abs_log10_error") if isinstance(p, dict) else None
    v = v if v is not None else _first(e, "persistence_log10_error")
    return abs(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


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
    if not forecast.get("held_out_params"):
        raise NoData("the backtest names no held-out size")
    held = float(forecast["held_out_params"])
    threshold = float(forecast.get("threshold") or LOGIT_THRESHOLD)
    lrs = sorted({e["lr"] for e in bt})
    domain_lr = [f"{v:g}" for v in lrs]
    dodge = {f"{v:g}": (i - (len(lrs) - 1) / 2) * 2 * DODGE_DECADES for i, v in enumerate(lrs)}
    points = []
    for f in forecast.get("fits", []):
        for p in f.get("points", []):
            if p.get("logit") and p["logit"] > 0 and p.get("params"):
                lab = f"{f['lr']:g}"
                is_held = p["params"] >= held
                points.append({"variant": f["variant"], "lr_label": lab, "params": float(p["params"]),
                               "x": float(p["params"]) * 10 ** (dodge.get(lab, 0) if is_held else 0),
                               "logit": float(p["logit"]), "seed": p.get("seed"),
                               "outcome": "failed" if p.get("failed") else "trained",
                               "role": "held out" if is_held else "fitted"})
    observed = [p["logit"] for p in points] + [e["observed_max_logit"] for e in bt if e.get("observed_max_logit")]
    if not observed:
        raise NoData("no positive attention logits in the forecast's fits")
    lo_y = min(min(observed), threshold) / 3
    hi_y = max(max(observed), threshold) * 3
    clip = lambda v: None if v is None or not math.isfinite(v) else min(max(v, lo_y), hi_y)
    curve, preds = [], []
    for e in bt:
        lab = f"{e['lr']:g}"
        for c in e.get("curve", []):
            if c["params"] <= held * (1 + 1e-9) and c.get("fit") and c["fit"] > 0:
                curve.append({"variant": e["variant"], "lr_label": lab, "params": c["params"], "fit": clip(c["fit"]),
                              "lo": clip(c.get("lo")), "hi": clip(c.get("hi"))})
        pred, (plo, phi) = e.get("predicted"), (e.get("interval") or [None, None])[:2]
        if pred is None or not math.isfinite(pred) or pred <= 0:
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
        alt.Chart(pts).mark_point(filled=True, stroke="black", strokeWidth=0.6).encode(
            x=x("x:Q"), y=_logy("logit:Q", y_title, ydom), color=colour, shape=_run_shape(),
            size=alt.Size("role:N", title="Point", scale=alt.Scale(domain=["fitted", "held out"], range=[50, 150])),
            tooltip=["variant", "lr_label", "params", "seed", "logit", "outcome", "role"]),
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
                "residual bootstrap", FAILED_NOTE[0].upper() + FAILED_NOTE[1:]]
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

def kappa_chart(runs: pl.DataFrame, sens: pl.DataFrame | None = None) -> alt.LayerChart:
    """Best final loss over the LR grid vs the transplant's kappa, one colour per size: each
    seed's best (a cross when every LR failed) and the mean over seeds (finding 9)."""
    runs = with_outcome(_need(runs, "model.qk_kappa", "variant", "scale", "lr", "init_loss", "seed"))
    kap = (runs.group_by("variant").agg(kappa=pl.col("model.qk_kappa").cast(pl.Float64).first())
           .filter(pl.col("kappa") > 0))
    if kap.is_empty():
        raise NoData("no variant with model.qk_kappa > 0")
    labels = size_labels(runs)
    n_seeds, opacity = _seed_note(runs)
    best = (_with_size(runs, labels).group_by("variant", "size", "seed")
            .agg(best_loss=pl.col("loss_capped").min(), failed=pl.col("failed").all())
            .join(kap, on="variant").with_columns(_outcome_col()))
    mean = best.group_by("variant", "size", "kappa").agg(pl.col("best_loss").mean())
    df = pl.concat([best.drop("failed").with_columns(kind=pl.lit("seed")), mean.with_columns(kind=pl.lit("mean"))],
                   how="diagonal_relaxed").sort("kappa")
    base = alt.Chart(df).encode(
        x=_logx("kappa:Q", "kappa (target attention-logit scale)", sorted(kap["kappa"].to_list()), fmt="~g"),
        y=alt.Y("best_loss:Q", title="Best final loss over the LR grid (nats)", scale=alt.Scale(zero=False)),
        color=_colour("size:N", _size_title(labels), list(labels.values())))
    return alt.layer(
        base.mark_line().transform_filter(alt.datum.kind == "mean"),
        base.mark_point(filled=True, size=60, opacity=opacity).encode(
            shape=_run_shape("Best run"), tooltip=["variant", "size", "seed", "kappa", "best_loss", "outcome"]
        ).transform_filter(alt.datum.kind == "seed"),
    ).properties(title=alt.Title("Loss vs logit transplant kappa",
                                 subtitle=f"Line: {_mean_text(n_seeds)}; points: each seed's best LR; "
                                          "cross: every LR of that seed failed"), width=360, height=260)


def _eps_runs(runs: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Finding 10's per-run table: the epsilon-study variants' runs with a positive final
    `metric` (column "value"), their size and epsilon; failed runs kept and marked."""
    runs = with_outcome(_need(runs, metric, "non_embedding_params", "lr", "variant", "init_loss"))
    runs = runs.filter(pl.col("variant").is_in(eps_family(runs)))
    df = runs.select("variant", "lr", "scale", col(runs, "seed", pl.Int64).alias("seed"), _outcome_col(),
                     params=col(runs, "non_embedding_params"), value=col(runs, metric),
                     eps=col(runs, "optim.eps")).filter(pl.col("value").is_finite() & (pl.col("value") > 0))
    if df.filter(pl.col("outcome") == "trained").is_empty():
        raise NoData(f"no positive {metric} on runs that trained")
    return df


def _eps_layers(df: pl.DataFrame, colour: alt.Color, y: alt.Y, group: list[str], extra: list) -> list:
    """A mean line over the trained runs of each group, and every run (crosses for failed)."""
    n_seeds = int(df.group_by(group + ["scale"]).agg(pl.col("seed").n_unique())["seed"].max())
    mean = (df.filter(pl.col("outcome") == "trained").group_by(group + ["scale"])
            .agg(pl.col("params").mean(), (10 ** pl.col("value").log10().mean()).alias("value")))
    data = pl.concat([df.with_columns(kind=pl.lit("run")), mean.with_columns(kind=pl.lit("mean"))],
                     how="diagonal_relaxed").sort(group + ["params"])
    x = _params_x(df["params"].to_list(), "params:Q")
    base = alt.Chart().encode(x=x, y=y, color=colour)
    return [alt.layer(
        base.mark_line().transform_filter(alt.datum.kind == "mean"),
        base.mark_point(filled=True, size=45, opacity=SEED_OPACITY if n_seeds > 1 else 0.9).encode(
            shape=_run_shape(), tooltip=["variant", "scale", "lr", "seed", "value", "eps", "outcome"]
        ).transform_filter(alt.datum.kind == "run"),
        *extra, data=data), n_seeds]


def grad_rms_vs_size(runs: pl.DataFrame) -> alt.FacetChart:
    """Final gradient RMS vs size per LR, one panel per variant, with AdamW epsilon dashed:
    every run (crosses for failed ones) and the geometric mean over the seeds that trained."""
    df = _lr_label(_eps_runs(runs, "grad_rms_final"))
    colour = _colour("lr_label:N", "Peak LR", _lr_domain(df))
    eps_rule = alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(y="mean(eps):Q")
    y = _logy("value:Q", "Final gradient RMS", _log_domain(pl.concat([df["value"], df["eps"].drop_nulls()])))
    chart, n_seeds = _eps_layers(df, colour, y, ["variant", "lr_label", "lr"],
                                 [eps_rule])
    return _facet(chart, "variant:N", "Variant", df["variant"].n_unique()).properties(
        title=alt.Title("Gradient RMS vs model size (dashed: AdamW epsilon)",
                        subtitle=f"Line: geometric mean over the runs that trained ({_seeds_text(n_seeds)}); "
                                 f"points: each run; {FAILED_NOTE}"))


def update_rms(runs: pl.DataFrame) -> alt.FacetChart:
    """Final update RMS (update / LR) vs size per variant, one panel per LR (finding 10):
    every run (crosses for failed ones) and the geometric mean over the seeds that trained."""
    df = _eps_runs(runs, "update_rms_final").with_columns(
        label=pl.format("{} (eps {})", pl.col("variant"), pl.col("eps").map_elements(
            lambda v: "?" if v is None else f"{v:g}", return_dtype=pl.String)))
    df = _lr_label(df)
    labels = df["label"].unique(maintain_order=True).to_list()
    chart, n_seeds = _eps_layers(df, _colour("label:N", "Variant", labels),
                                 _logy("value:Q", "Final update RMS (update / LR)", _log_domain(df["value"])),
                                 ["variant", "label", "lr_label", "lr"], [])
    return chart.properties(**PANEL).facet(
        facet=alt.Facet("lr_label:N", title="Peak LR", sort=_lr_domain(df)), columns=3).properties(
        title=alt.Title("Update RMS vs model size",
                        subtitle=f"Line: geometric mean over the runs that trained ({_seeds_text(n_seeds)}); "
                                 f"points: each run; {FAILED_NOTE}"))


# ---- rendering ---------------------------------------------------------------------------

def _read_tables(study_dir: Path) -> dict[str, Any]:
    def parquet(name: str) -> pl.DataFrame:
        p = study_dir / name
        return pl.read_parquet(p) if p.is_file() else pl.DataFrame()
    fc = study_dir / "forecast.json"
    return {"runs": parquet("runs.parquet"), "curves": parquet("curves.parquet"),
            "sensitivity": parquet("sensitivity.parquet"),
            "forecast": json.loads(fc.read_text()) if fc.is_file() else {}}


def _threshold(t: dict) -> float:
    v = (t.get("forecast") or {}).get("threshold")
    return float(v) if v else LOGIT_THRESHOLD


BUILDERS: dict[str, Callable[[dict], Any]] = {
    "lr_vs_loss": lambda t: lr_vs_loss(t["runs"]),
    "sensitivity_vs_size": lambda t: sensitivity_vs_size(t["sensitivity"], t["runs"]),
    "best_lr_vs_size": lambda t: best_lr_vs_size(t["sensitivity"]),
    "attn_logit_vs_step": lambda t: attn_logit_vs_step(t["curves"], t["runs"]),
    "attn_logit_vs_lr": lambda t: attn_logit_vs_lr(t["runs"], _threshold(t)),
    "logz_vs_step": lambda t: logz_vs_step(t["curves"], t["runs"]),
    "forecast": lambda t: forecast_chart(t["forecast"]),
    "kappa": lambda t: kappa_chart(t["runs"], t["sensitivity"]),
    "grad_rms_vs_size": lambda t: grad_rms_vs_size(t["runs"]),
    "update_rms": lambda t: update_rms(t["runs"]),
}
FIGURE_KINDS = tuple(BUILDERS)


def build(name: str, tables: dict[str, Any]) -> Any:
    """The chart `name` for these tables, or a placeholder naming what is missing."""
    try:
        return BUILDERS[name](tables)
    except NoData as e:
        return placeholder(name, str(e))


def save_chart(chart: Any, stem: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write stem.png / .svg / .html (HTML with Vega inlined: opens offline)."""
    out = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        kw: dict[str, Any] = {"inline": True, "embed_options": {"actions": False}} if fmt == "html" else {}
        if fmt == "png":
            kw["scale_factor"] = 2  # crisp on high-DPI screens and in the PDF report
        atomic_write(path, lambda p, fmt=fmt, kw=kw: chart.save(str(p), format=fmt, **kw))
        out.append(path)
    return out


def render_figure(name: str, study_dir: Path, stem: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """One figure of a study: stem.png / .svg / .html (a placeholder if the data is missing)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown figure {name!r} (expected one of: {', '.join(BUILDERS)})")
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    return save_chart(build(name, _read_tables(Path(study_dir))), Path(stem), formats)


def render_study(study_dir: Path, findings: list[int], out_dir: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Every figure the findings need, written to out_dir/<name>.{png,svg,html}."""
    study_dir, out_dir = Path(study_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = _read_tables(study_dir)
    paths: list[Path] = []
    for name in figures_for(findings):
        paths += save_chart(build(name, tables), out_dir / name, formats)
    return paths
