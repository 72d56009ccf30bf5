"""Figures: every kind builds a valid Vega-Lite spec; PNG / SVG / offline HTML files render."""
from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
import vl_convert as vlc

from stability import figures
from stability.analysis import analyse_study, planted
from stability.analysis.sensitivity import with_outcome
from stability.figure_names import FIGURES_BY_FINDING

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CAPTIONS = Path(__file__).resolve().parents[1] / "workflow" / "report" / "figure.rst"


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A planted study with every kind of variant, analysed: the tables the figures read."""
    d = tmp_path_factory.mktemp("study")
    variants = {**planted.MITIGATION_VARIANTS, "big_eps": {"optim.eps": 1e-4},
                "kappa_1e2": {"model.qk_kappa": 100.0}, "kappa_1e4": {"model.qk_kappa": 1e4}}
    runs, curves = planted.planted_study(variants, seeds=(0,))
    runs.write_parquet(d / "runs.parquet")
    curves.write_parquet(d / "curves.parquet")
    analyse_study(d, {"name": "planted", "findings": list(range(1, 12)), "reference": "reference", "options": {}})
    return d


def test_every_figure_kind_compiles(study_dir):
    tables = figures._read_tables(study_dir)
    for name in figures.BUILDERS:
        chart = figures.build(name, tables)
        spec = chart.to_dict()
        assert "No data for this figure" not in json.dumps(spec), name
        vega = vlc.vegalite_to_vega(spec)  # raises on an invalid spec
        assert vega["marks"], name


def test_png_svg_and_offline_html(study_dir, tmp_path):
    paths = figures.render_figure("forecast", study_dir, tmp_path / "forecast")
    assert [p.suffix for p in paths] == [".png", ".svg", ".html"]
    png, svg, html = (p.read_bytes() for p in paths)
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000
    assert svg.lstrip().startswith(b"<svg") and b"Forecast backtest" in svg
    # self-contained: Vega is inlined, nothing is fetched from a CDN
    assert len(html) > 200_000 and not re.search(rb"<script[^>]+src=\"https?://", html)


def test_render_study_writes_every_needed_figure(study_dir, tmp_path):
    paths = figures.render_study(study_dir, [1, 9], tmp_path / "figs", formats=("png",))
    assert [p.stem for p in paths] == figures.figures_for([1, 9])
    assert all(p.read_bytes().startswith(PNG_MAGIC) and p.stat().st_size > 5_000 for p in paths)


def test_missing_data_gives_a_placeholder(tmp_path):
    pl.DataFrame({"run_id": ["a"]}).write_parquet(tmp_path / "runs.parquet")
    paths = figures.render_figure("kappa", tmp_path, tmp_path / "kappa", formats=("png",))
    assert paths[0].read_bytes().startswith(PNG_MAGIC)
    spec = json.dumps(figures.build("kappa", figures._read_tables(tmp_path)).to_dict())
    assert "No data for this figure" in spec
    with pytest.raises(ValueError, match="unknown figure"):
        figures.render_figure("nope", tmp_path, tmp_path / "nope")


def test_every_planned_figure_has_a_builder_and_a_caption():
    planned = {n for names in FIGURES_BY_FINDING.values() for n in names}
    assert planned <= set(figures.BUILDERS)
    captions = CAPTIONS.read_text()
    for name in figures.BUILDERS:
        assert f'snakemake.wildcards.figure == "{name}"' in captions, name


# ---- what the figures show (docs/findings.md relies on these) ----------------------------

def _walk(spec):
    """Every dict inside a Vega-Lite spec."""
    if isinstance(spec, dict):
        yield spec
        for v in spec.values():
            yield from _walk(v)
    elif isinstance(spec, list):
        for v in spec:
            yield from _walk(v)


def _marks(spec) -> list[str]:
    return [m if isinstance(m, str) else m.get("type") for d in _walk(spec) if (m := d.get("mark"))]


def _rows(spec) -> list[dict]:
    """Every data row of a spec (Altair puts inline data in `datasets`)."""
    return [r for rows in spec.get("datasets", {}).values() for r in rows]


def _scale_domains(spec, channel: str) -> list[list]:
    """The distinct explicit scale domains of one channel, in the order they appear."""
    out = []
    for d in _walk(spec):
        enc = d.get("encoding")
        ch = enc.get(channel) if isinstance(enc, dict) else None
        scale = ch.get("scale") if isinstance(ch, dict) else None
        if isinstance(scale, dict) and "domain" in scale and scale["domain"] not in out:
            out.append(scale["domain"])
    return out


@pytest.fixture(scope="module")
def seeded():
    """Three seeds, four sizes, failures without qk-layernorm and without z-loss."""
    variants = {k: planted.MITIGATION_VARIANTS[k] for k in ("reference", "no_qk_ln", "no_z_loss")}
    runs, curves = planted.planted_study(variants, seeds=(0, 1, 2), noise_sd=0.02)
    return runs, curves


def test_size_legends_give_parameters_not_scale_names(study_dir):
    tables = figures._read_tables(study_dir)
    for name in ("lr_vs_loss", "attn_logit_vs_lr", "kappa"):
        spec = figures.build(name, tables).to_dict()
        domains = [d for d in _scale_domains(spec, "color") if d and "params" in str(d)]
        assert domains == [["98k params", "390k params", "1.6M params", "6.3M params"]], name
        assert not re.search(r'"s[0-3]"', json.dumps(domains)), name
    assert figures.fmt_params(24576) == "25k" and figures.fmt_params(4727808) == "4.7M"


def test_size_labels_name_the_shape_when_width_and_depth_ladders_mix():
    scales = {"s0": (64, 2), "w128": (128, 2), "d8": (64, 8)}
    runs, _ = planted.planted_study({"default": {}}, scales=scales, seeds=(0,))
    labels = figures.size_labels(runs)
    # 2x128 and 8x64 have the same parameter count: the shape tells them apart
    assert labels == {"s0": "98k params (2×64)", "d8": "390k params (8×64)", "w128": "390k params (2×128)"}
    spec = figures.sensitivity_vs_size(None, runs).to_dict()
    assert {r["variant"] for r in _rows(spec)} == {"width ladder (2 layers)", "depth ladder (width 64)"}


def test_seeds_are_drawn_with_their_spread(seeded):
    runs, _ = seeded
    spec = figures.lr_vs_loss(runs).to_dict()
    rows = _rows(spec)
    assert sum(r["kind"] == "run" for r in rows) == runs.height  # every seed's run, not only the mean
    assert "mean over 3 seeds" in json.dumps(spec["title"])
    spec = figures.sensitivity_vs_size(None, runs).to_dict()
    rows = _rows(spec)
    seeds = [r for r in rows if r["kind"] == "seed"]
    assert len(seeds) == 2 * 3 * 4 * 3  # LR sets x variants x sizes x seeds
    means = [r for r in rows if r["kind"] == "mean"]
    assert all(r["lo"] <= r["sens"] <= r["hi"] for r in means) and any(r["hi"] > r["lo"] for r in means)
    assert "errorbar" in _marks(spec)


def test_every_failed_run_is_a_cross(seeded):
    runs, curves = seeded
    n_failed = with_outcome(runs)["failed"].sum()
    assert n_failed > 0
    for chart in (figures.lr_vs_loss(runs), figures.attn_logit_vs_lr(runs)):
        spec = chart.to_dict()
        assert sum(r.get("kind") == "run" and r["outcome"] == "failed" for r in _rows(spec)) == n_failed
        assert ["circle", "cross"] in [d["scale"]["range"] for d in _walk(spec)
                                       if d.get("field") == "outcome" and "scale" in d]
    # step curves: every failed run of the drawn size ends in a cross, runs stopped early included
    spec = figures.attn_logit_vs_step(curves, runs).to_dict()
    ends = {r["run_id"] for r in _rows(spec) if r["kind"] == "end"}
    assert ends == set(with_outcome(runs).filter(pl.col("failed"))["run_id"])
    largest = runs.sort("non_embedding_params")["scale"][-1]
    spec = figures.logz_vs_step(curves, runs).to_dict()
    failed_largest = set(with_outcome(runs).filter(pl.col("failed") & (pl.col("scale") == largest))["run_id"])
    assert {r["run_id"] for r in _rows(spec) if r["kind"] == "end"} == failed_largest


def test_attn_logit_vs_step_names_the_block(seeded):
    runs, curves = seeded
    spec = json.dumps(figures.attn_logit_vs_step(curves, runs).to_dict()["title"])
    assert "max over blocks" in spec  # planted curves have no per-block columns
    with_l0 = curves.with_columns(attn_logit_l0=pl.col("max_attn_logit") / 2)
    spec = figures.attn_logit_vs_step(with_l0, runs).to_dict()
    assert "of block 0" in json.dumps(spec["title"])
    assert max(r["logit"] for r in _rows(spec) if r["kind"] == "curve") == pytest.approx(
        with_l0["attn_logit_l0"].max())


def test_output_logit_figure_plots_the_papers_quantities(seeded):
    runs, curves = seeded
    spec = figures.logz_vs_step(curves, runs).to_dict()
    titles = list(dict.fromkeys(d["title"] for d in _walk(spec) if d.get("field") == "value" and "title" in d))
    assert titles == ["Output-logit mean", "RMS log Z over tokens (nats)", "Training loss (nats)"]
    assert "rule" not in _marks(spec)  # no line at log Z = 0
    for lo, hi in _scale_domains(spec, "y"):  # a drift of hundredths of a nat cannot fill a panel
        assert hi - lo >= figures.MIN_STEP_SPAN - 1e-9
    # without output_logit_mean (old runs) the figure says so instead of failing
    spec = json.dumps(figures.logz_vs_step(curves.drop("output_logit_mean"), runs).to_dict())
    assert "Not logged by these runs: Output-logit mean" in spec


def test_a_tiny_loss_difference_does_not_fill_the_panel():
    """The long-run study: one LR, three variants within 0.005 nats of each other."""
    v = {"z_loss": {}, "no_z_loss": {"loss.z_loss": 0.0}, "no_wd": {"loss.z_loss": 0.0, "optim.weight_decay": 0.0}}
    runs, _ = planted.planted_study(v, scales={"s0": (64, 2)}, lrs=[0.03], seeds=(0,), noise_sd=0.002)
    spec = figures.lr_vs_loss(runs).to_dict()
    (lo, hi), = _scale_domains(spec, "y")
    assert lo <= runs["final_loss"].min() and hi >= planted.INIT_LOSS  # from the best loss up to loss_0
    printed = [d["encoding"]["text"] for d in _walk(spec) if "text" in (d.get("encoding") or {})]
    assert printed == [{"field": "loss", "format": ".3f", "type": "quantitative"}]  # values beside the points
    many = figures.lr_vs_loss(planted.planted_study(v, seeds=(0,))[0]).to_dict()
    assert "text" not in _marks(many)  # 6 LRs x 4 sizes per panel: no printed values


def _forecast(study_dir) -> dict:
    return json.loads((study_dir / "forecast.json").read_text())


def test_forecast_y_range_fits_the_data(study_dir):
    fc = _forecast(study_dir)
    observed = [p["logit"] for f in fc["fits"] for p in f["points"] if p["logit"]]
    for e in fc["backtest"]:  # a wild extrapolation must not stretch the axis
        if e["lr"] == 0.1:
            e["predicted"] *= 1e20
            e["interval"] = [e["interval"][0], e["interval"][1] * 1e21]
            for c in e["curve"]:
                c["fit"] *= (c["params"] / 1e5) ** 4
    spec = figures.forecast_chart(fc).to_dict()
    (lo, hi), = {tuple(d) for d in _scale_domains(spec, "y")}
    assert lo <= min(observed) and hi >= max(max(observed), fc["threshold"])
    assert hi / lo <= 100 * max(max(observed), fc["threshold"]) / min(observed)  # within two decades of the data
    arrows = [r["arrow"] for r in _rows(spec) if r.get("arrow")]
    assert len(arrows) == 1 and arrows[0].startswith("▲ ")
    # the drawn curves stop at the held-out size
    assert max(r["params"] for r in _rows(spec) if "fit" in r) == pytest.approx(fc["held_out_params"])
    # failed runs are crosses, apart from trained ones, at the held-out size too
    held = [r for r in _rows(spec) if r.get("role") == "held out"]
    assert {r["outcome"] for r in held} == {"trained", "failed"}


def test_forecast_title_shows_the_persistence_baseline(study_dir):
    fc = {k: v for k, v in _forecast(study_dir).items() if not k.startswith("persistence")}
    title = json.dumps(figures.forecast_chart(fc).to_dict()["title"])
    assert "score 100%; no persistence baseline in forecast.json" in title
    for baseline in ({"persistence": {"score": 5 / 6}}, {"persistence": 5 / 6}, {"persistence_score": 5 / 6}):
        title = json.dumps(figures.forecast_chart({**fc, **baseline}).to_dict()["title"])
        assert "score 100%; persistence baseline 83%" in title
    assert "Median |log10(predicted / observed)| at the held-out size" in title and "(persistence:" not in title
    for e in fc["backtest"]:
        e["persistence"] = {"log10_error": -0.5}
    assert "decades (persistence: 0.5)" in json.dumps(figures.forecast_chart(fc).to_dict()["title"])
