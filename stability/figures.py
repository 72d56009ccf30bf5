"""The study figures, as Altair charts saved to PNG, SVG and self-contained (offline) HTML.

One function per figure kind; each takes a study's tables (runs, curves, sensitivity,
forecast) and returns a chart. `figures_for(findings)` names the figures a study needs,
`render_study(study_dir, findings, out_dir)` writes them all. Colours are the Okabe-Ito
palette (safe for the common colour-vision deficiencies); axes are log-scaled as in the
paper, and every axis title carries its unit.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import altair as alt
import polars as pl

from .analysis import roles
from .analysis.fits import LOGIT_THRESHOLD
from .analysis.io import atomic_write
from .analysis.sensitivity import col, with_outcome
from .figure_names import figures_for  # the finding -> figures table, shared with the Snakefile

# Okabe-Ito, reordered so the low-contrast yellow comes last.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#000000", "#F0E442"]
FORMATS = ("png", "svg", "html")
MAX_POINTS_PER_CURVE = 60  # per run in step plots: enough for the shape, quick to render
PANEL = {"width": 220, "height": 170}

PARAMS_TITLE = "Non-embedding parameters"
LR_TITLE = "Peak learning rate"


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


def _scale_order(df: pl.DataFrame) -> list[str]:
    """Scale names from smallest to largest model."""
    if "non_embedding_params" not in df.columns:
        return sorted(df["scale"].unique().to_list())
    g = df.group_by("scale").agg(pl.col("non_embedding_params").cast(pl.Float64, strict=False).mean()).sort(
        "non_embedding_params", nulls_last=True)
    return g["scale"].to_list()


def _colour(field: str, title: str, domain: list | None = None, **kw: Any) -> alt.Color:
    scale = alt.Scale(range=OKABE_ITO, domain=domain) if domain is not None else alt.Scale(range=OKABE_ITO)
    return alt.Color(field, title=title, scale=scale, sort=domain, **kw)


def _lr_label(df: pl.DataFrame, column: str = "lr") -> pl.DataFrame:
    """A string LR column (`lr_label`) so LRs are discrete colours, with a sort order."""
    return df.with_columns(lr_label=pl.col(column).map_elements(lambda v: f"{v:g}", return_dtype=pl.String))


def _lr_domain(df: pl.DataFrame) -> list[str]:
    return [f"{v:g}" for v in sorted(df["lr"].unique().to_list())]


def _logx(field: str, title: str, values: list[float] | None = None, fmt: str = "~s") -> alt.X:
    """Log x axis fitted to the data (no padding out to whole decades); `values` pins the ticks."""
    axis = alt.Axis(format=fmt, values=values, grid=False) if values else alt.Axis(format=fmt, tickCount=6, grid=False)
    return alt.X(field, title=title, scale=alt.Scale(type="log", nice=False, padding=12), axis=axis)


def _lr_x(df: pl.DataFrame, field: str = "lr:Q") -> alt.X:
    return _logx(field, LR_TITLE, sorted(df["lr"].unique().to_list()), fmt="~g")


def _logy(field: str, title: str, **kw: Any) -> alt.Y:
    return alt.Y(field, title=title, scale=alt.Scale(type="log", nice=False, padding=8),
                 axis=alt.Axis(format="~e", tickCount=6), **kw)


def _facet(chart: alt.Chart | alt.LayerChart, field: str, title: str, n: int, columns: int = 3) -> alt.FacetChart:
    return chart.properties(**PANEL).facet(facet=alt.Facet(field, title=title), columns=min(columns, max(n, 1)))


def _thin(curves: pl.DataFrame, max_rows: int = MAX_POINTS_PER_CURVE) -> pl.DataFrame:
    """Every k-th row of each run (first and last kept), so step plots stay small."""
    i = pl.int_range(pl.len()).over("run_id")
    n = pl.len().over("run_id")
    k = (n / max_rows).ceil().cast(pl.Int64).clip(lower_bound=1)
    return curves.filter((i % k == 0) | (i == n - 1))


def _largest_scale_first_seed(curves: pl.DataFrame, runs: pl.DataFrame | None) -> tuple[pl.DataFrame, str]:
    ref = runs if runs is not None and not runs.is_empty() else curves
    order = _scale_order(ref) if "scale" in ref.columns else []
    scale = order[-1] if order else curves["scale"].max()
    seed = curves["seed"].min()
    return curves.filter((pl.col("scale") == scale) & (pl.col("seed") == seed)), str(scale)


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


# ---- the figures -------------------------------------------------------------------------

def lr_vs_loss(runs: pl.DataFrame) -> alt.FacetChart:
    """Final loss vs peak LR per variant, one line per scale; failed runs drawn as crosses."""
    runs = with_outcome(_need(runs, "lr", "scale", "variant", "init_loss"))
    order = _scale_order(runs)
    df = (runs.group_by("variant", "scale", "lr")
          .agg(loss=pl.col("loss_capped").mean(), failed=pl.col("failed").any())
          .with_columns(outcome=pl.when(pl.col("failed")).then(pl.lit("failed")).otherwise(pl.lit("trained")))
          .sort("variant", "scale", "lr"))
    base = alt.Chart().encode(
        x=_lr_x(df),
        y=alt.Y("loss:Q", title="Final validation loss (nats)", scale=alt.Scale(zero=False)),
        color=_colour("scale:N", "Scale", order),
    )
    chart = alt.layer(
        base.mark_line(opacity=0.7),
        base.mark_point(size=60, filled=True).encode(
            shape=alt.Shape("outcome:N", title="Run", scale=alt.Scale(domain=["trained", "failed"],
                                                                       range=["circle", "cross"])),
            tooltip=["variant", "scale", "lr", "loss", "outcome"]),
        data=df,
    )
    return _facet(chart, "variant:N", "Variant", df["variant"].n_unique()).properties(
        title=alt.Title("Final loss vs learning rate",
                        subtitle="Mean over seeds; a cross marks a failed run (diverged, non-finite: drawn at its initial loss; or stalled near it)"))


def sensitivity_vs_size(sens: pl.DataFrame) -> alt.LayerChart:
    """LR sensitivity vs model size per variant, with the min-max interval over seeds."""
    df = _need(sens, "non_embedding_params", "sensitivity", "variant").drop_nulls(["non_embedding_params", "sensitivity"])
    if df.is_empty():
        raise NoData("no sensitivity values")
    variants = df["variant"].unique(maintain_order=True).to_list()
    base = alt.Chart(df).encode(x=_logx("non_embedding_params:Q", PARAMS_TITLE), color=_colour("variant:N", "Variant", variants))
    y = alt.Y("sensitivity:Q", title="LR sensitivity (nats)")
    return alt.layer(
        base.mark_line().encode(y=y),
        base.mark_point(filled=True, size=60).encode(y=y, tooltip=["variant", "scale", "sensitivity", "n_seeds"]),
        base.mark_errorbar().encode(y=alt.Y("sensitivity_lo:Q", title="LR sensitivity (nats)"), y2="sensitivity_hi:Q"),
    ).properties(title="LR sensitivity vs model size", width=360, height=260)


def best_lr_vs_size(sens: pl.DataFrame) -> alt.LayerChart:
    """Fitted optimal LR vs model size per variant (finding 6: muParam keeps it stable)."""
    df = _need(sens, "non_embedding_params", "best_lr_fit", "variant").drop_nulls(["non_embedding_params", "best_lr_fit"])
    if df.is_empty():
        raise NoData("no optimal LR values")
    variants = df["variant"].unique(maintain_order=True).to_list()
    base = alt.Chart(df).encode(x=_logx("non_embedding_params:Q", PARAMS_TITLE),
                                y=_logy("best_lr_fit:Q", "Optimal peak LR (quadratic fit)"),
                                color=_colour("variant:N", "Variant", variants))
    return alt.layer(base.mark_line(), base.mark_point(filled=True, size=60).encode(
        tooltip=["variant", "scale", "best_lr", "best_lr_fit"])).properties(
        title="Optimal learning rate vs model size", width=360, height=260)


def attn_logit_vs_step(curves: pl.DataFrame, runs: pl.DataFrame | None = None) -> alt.FacetChart:
    """Max attention logit over training at the largest scale, one line per LR, per variant."""
    curves = _need(curves, "step", "max_attn_logit", "lr", "variant", "scale", "seed", "run_id")
    df, scale = _largest_scale_first_seed(curves, runs)
    df = _thin(df.filter(pl.col("max_attn_logit").is_not_null() & (pl.col("max_attn_logit") > 0)))
    if df.is_empty():
        raise NoData("no positive max_attn_logit values")
    df = _lr_label(df.select("variant", "lr", "step", "max_attn_logit", "run_id"))
    chart = alt.Chart(df).mark_line().encode(
        x=alt.X("step:Q", title="Training step"),
        y=_logy("max_attn_logit:Q", "Max attention logit (over layers)"),
        color=_colour("lr_label:N", "Peak LR", _lr_domain(df)),
        detail="run_id:N",
    )
    return _facet(chart, "variant:N", "Variant", df["variant"].n_unique()).properties(
        title=f"Attention-logit growth during training (scale {scale})")


def attn_logit_vs_lr(runs: pl.DataFrame, threshold: float = LOGIT_THRESHOLD) -> alt.FacetChart:
    """Max attention logit at the probe step vs LR, per variant, with the divergence threshold."""
    runs = with_outcome(_need(runs, "lr", "scale", "variant", "init_loss"))
    df = runs.select("variant", "scale", "lr", "failed", logit=pl.coalesce(
        col(runs, "max_attn_logit_at_probe"), col(runs, "max_attn_logit"))).filter(
        pl.col("logit").is_not_null() & (pl.col("logit") > 0))
    if df.is_empty():
        raise NoData("no attention-logit values")
    df = (df.group_by("variant", "scale", "lr").agg(pl.col("logit").max(), pl.col("failed").any())
          .with_columns(outcome=pl.when(pl.col("failed")).then(pl.lit("failed")).otherwise(pl.lit("trained")),
                        threshold=pl.lit(threshold)).sort("variant", "scale", "lr"))
    base = alt.Chart().encode(x=_lr_x(df),
                              y=_logy("logit:Q", "Max attention logit at the probe step"),
                              color=_colour("scale:N", "Scale", _scale_order(runs)))
    chart = alt.layer(
        base.mark_line(opacity=0.7),
        base.mark_point(size=60, filled=True).encode(
            shape=alt.Shape("outcome:N", title="Run", scale=alt.Scale(domain=["trained", "failed"],
                                                                       range=["circle", "cross"])),
            tooltip=["variant", "scale", "lr", "logit", "outcome"]),
        alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(y="mean(threshold):Q"),
        data=df,
    )
    return _facet(chart, "variant:N", "Variant", df["variant"].n_unique()).properties(
        title=f"Max attention logit vs learning rate (dashed: threshold {threshold:g})")


def logz_vs_step(curves: pl.DataFrame, runs: pl.DataFrame | None = None) -> alt.FacetChart:
    """RMS over tokens of log Z (sqrt of the unscaled z-loss) over training at the largest
    scale, per variant: what finding 2's check reads (a mean over tokens can cancel)."""
    curves = _need(curves, "step", "z_loss", "lr", "variant", "scale", "seed", "run_id")
    df, scale = _largest_scale_first_seed(curves, runs)
    df = df.filter(pl.col("z_loss").is_not_null() & pl.col("z_loss").is_finite())
    df = _thin(df.with_columns(logz_rms=pl.col("z_loss").sqrt()))
    if df.is_empty():
        raise NoData("no finite z_loss values")
    df = _lr_label(df.select("variant", "lr", "step", "logz_rms", "run_id"))
    chart = alt.layer(
        alt.Chart().mark_line().encode(
            x=alt.X("step:Q", title="Training step"),
            y=alt.Y("logz_rms:Q", title="RMS log Z over tokens (nats)"),
            color=_colour("lr_label:N", "Peak LR", _lr_domain(df)), detail="run_id:N"),
        alt.Chart().mark_rule(color="gray", strokeDash=[4, 4]).encode(y=alt.datum(0)),
        data=df,
    )
    return _facet(chart, "variant:N", "Variant", df["variant"].n_unique()).properties(
        title=f"Output-logit divergence: RMS log Z during training (scale {scale})")


def forecast_chart(forecast: dict) -> alt.Chart | alt.FacetChart:
    """Backtest of the attention-logit forecast: fit on smaller sizes, band, held-out point."""
    bt = (forecast or {}).get("backtest") or []
    if not bt:
        raise NoData(f"no backtest (status: {(forecast or {}).get('status')}, "
                     f"backtest: {(forecast or {}).get('backtest_status')})")
    held = forecast["held_out_params"]
    threshold = forecast.get("threshold", LOGIT_THRESHOLD)
    curve_rows, point_rows = [], []
    for e in bt:
        lab = f"{e['lr']:g}"
        curve_rows += [{"variant": e["variant"], "lr_label": lab, **c} for c in e.get("curve", [])]
    for f in forecast.get("fits", []):
        for p in f.get("points", []):
            if p.get("logit") and p["logit"] > 0 and p.get("params"):
                point_rows.append({"variant": f["variant"], "lr_label": f"{f['lr']:g}", "params": p["params"],
                                   "logit": p["logit"], "role": "held out" if p["params"] == held else "fitted"})
    if not curve_rows:
        raise NoData("backtest fits have no curve")
    curves = pl.DataFrame(curve_rows).filter((pl.col("fit") > 0) & (pl.col("lo") > 0))
    points = pl.DataFrame(point_rows) if point_rows else pl.DataFrame(
        schema={"variant": pl.String, "lr_label": pl.String, "params": pl.Float64, "logit": pl.Float64, "role": pl.String})
    lrs = sorted({e["lr"] for e in bt})
    domain = [f"{v:g}" for v in lrs]
    colour = _colour("lr_label:N", "Peak LR", domain)
    x = _logx("params:Q", PARAMS_TITLE)
    y_title = "Max attention logit at the probe step"
    layers = [
        alt.Chart(curves).mark_area(opacity=0.2).encode(
            x=x, y=_logy("lo:Q", y_title), y2="hi:Q", fill=alt.Fill("lr_label:N", legend=None,
                                                                      scale=alt.Scale(range=OKABE_ITO, domain=domain))),
        alt.Chart(curves).mark_line().encode(
            x=x, y=_logy("fit:Q", y_title), color=colour, detail="variant:N",
            **({"strokeDash": alt.StrokeDash("variant:N", title="Variant")} if curves["variant"].n_unique() > 1 else {})),
        alt.Chart(points).mark_point(filled=True, stroke="black", strokeWidth=0.8).encode(
            x=x, y=_logy("logit:Q", y_title), color=colour,
            size=alt.Size("role:N", legend=None, scale=alt.Scale(domain=["fitted", "held out"], range=[60, 160])),
            shape=alt.Shape("role:N", title="Point", scale=alt.Scale(domain=["fitted", "held out"],
                                                                      range=["circle", "diamond"])),
            tooltip=["variant", "lr_label", "params", "logit", "role"]),
        alt.Chart(pl.DataFrame({"threshold": [threshold]})).mark_rule(strokeDash=[4, 4], color="gray").encode(
            y="threshold:Q"),
        alt.Chart(pl.DataFrame({"held": [held]})).mark_rule(strokeDash=[2, 2], color="black").encode(x="held:Q"),
    ]
    score = forecast.get("score")
    title = (f"Forecast backtest: fit without the largest size (score {score:.0%})" if score is not None
             else "Forecast backtest: fit without the largest size")
    lo, hi = (forecast.get("bootstrap") or {}).get("percentiles", [5, 95])
    subtitle = (f"Band: {lo:g}th-{hi:g}th percentile of a residual bootstrap; dashed: divergence threshold "
                f"{threshold:g}; dotted: held-out size")
    # Shared legends of layered charts vanish when one layer hides its own: keep them apart.
    return alt.layer(*layers).resolve_legend(fill="independent", size="independent").properties(
        title=alt.Title(title, subtitle=subtitle), width=420, height=300)


def kappa_chart(runs: pl.DataFrame, sens: pl.DataFrame) -> alt.LayerChart:
    """Best loss vs the transplant's kappa, one line per scale (finding 9)."""
    runs = _need(runs, "model.qk_kappa", "variant")
    sens = _need(sens, "best_loss", "variant", "scale")
    kap = runs.group_by("variant").agg(kappa=pl.col("model.qk_kappa").cast(pl.Float64).first()).filter(pl.col("kappa") > 0)
    if kap.is_empty():
        raise NoData("no variant with model.qk_kappa > 0")
    df = sens.join(kap, on="variant").sort("kappa")
    base = alt.Chart(df).encode(x=_logx("kappa:Q", "kappa (target attention-logit scale)",
                                        sorted(df["kappa"].unique().to_list()), fmt="~g"),
                                y=alt.Y("best_loss:Q", title="Best final loss over the LR grid (nats)",
                                        scale=alt.Scale(zero=False)),
                                color=_colour("scale:N", "Scale", _scale_order(sens)))
    return alt.layer(base.mark_line(), base.mark_point(filled=True, size=60).encode(
        tooltip=["variant", "scale", "kappa", "best_loss", "best_lr"])).properties(
        title="Loss vs logit transplant kappa", width=360, height=260)


def _stable_by_size(runs: pl.DataFrame, metric: str, alias: str) -> pl.DataFrame:
    """Finding 10's table: a final per-run metric of the epsilon-study variants' stable runs,
    averaged over seeds per (variant, lr, scale), with size and epsilon, sorted for lines."""
    runs = with_outcome(_need(runs, metric, "non_embedding_params", "lr", "variant", "init_loss"))
    runs = runs.filter(pl.col("variant").is_in(eps_family(runs)))
    df = runs.filter(~pl.col("failed")).select(
        "variant", "lr", "scale", params=col(runs, "non_embedding_params"), **{alias: col(runs, metric)},
        eps=col(runs, "optim.eps")).filter(pl.col(alias) > 0)
    if df.is_empty():
        raise NoData(f"no positive {metric} on stable runs")
    return (df.group_by("variant", "lr", "scale").agg(pl.col("params").mean(), pl.col(alias).mean(), pl.col("eps").first())
            .sort("variant", "lr", "params"))


def grad_rms_vs_size(runs: pl.DataFrame) -> alt.FacetChart:
    """Final gradient RMS vs size per LR (stable runs), with AdamW epsilon as a dashed line."""
    df = _lr_label(_stable_by_size(runs, "grad_rms_final", "g"))
    base = alt.Chart().encode(x=_logx("params:Q", PARAMS_TITLE), y=_logy("g:Q", "Final gradient RMS"),
                              color=_colour("lr_label:N", "Peak LR", _lr_domain(df)))
    chart = alt.layer(
        base.mark_line(), base.mark_point(filled=True).encode(tooltip=["variant", "scale", "lr", "g", "eps"]),
        alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(y="mean(eps):Q"),
        data=df,
    )
    return _facet(chart, "variant:N", "Variant", df["variant"].n_unique()).properties(
        title="Gradient RMS vs model size (dashed: AdamW epsilon)")


def update_rms(runs: pl.DataFrame) -> alt.FacetChart:
    """Final update RMS (update / LR) vs size per variant, one panel per LR (finding 10)."""
    df = _stable_by_size(runs, "update_rms_final", "u").with_columns(
        label=pl.format("{} (eps {})", pl.col("variant"), pl.col("eps").map_elements(
            lambda v: "?" if v is None else f"{v:g}", return_dtype=pl.String)))
    df = _lr_label(df)
    labels = df["label"].unique(maintain_order=True).to_list()
    base = alt.Chart().encode(x=_logx("params:Q", PARAMS_TITLE), y=_logy("u:Q", "Final update RMS (update / LR)"),
                              color=_colour("label:N", "Variant", labels))
    chart = alt.layer(base.mark_line(), base.mark_point(filled=True).encode(
        tooltip=["variant", "scale", "lr", "u", "eps"]), data=df)
    return chart.properties(**PANEL).facet(
        facet=alt.Facet("lr_label:N", title="Peak LR", sort=_lr_domain(df)), columns=3).properties(
        title="Update RMS vs model size")


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
    "sensitivity_vs_size": lambda t: sensitivity_vs_size(t["sensitivity"]),
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
