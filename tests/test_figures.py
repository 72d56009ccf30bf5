"""Figures: every kind builds a valid Vega-Lite spec; PNG / SVG / offline HTML files render."""
from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
import vl_convert as vlc

from stability import figures
from helpers import analyse_dir
from stability.analysis import planted
from stability.analysis.sensitivity import with_outcome
from stability.figure_names import FIGURES_BY_FINDING

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CAPTIONS = Path(__file__).resolve().parents[1] / "workflow" / "report" / "figure.rst"
TABLE_FILES = {"runs": "runs.parquet", "curves": "curves.parquet", "sensitivity": "sensitivity.parquet",
               "forecast": "forecast.json"}  # the figure rule's inputs, as named in a study folder


def table_paths(d: Path) -> dict[str, Path]:
    """The figure tables that exist in study folder d (as the figure rule would pass them)."""
    return {k: d / f for k, f in TABLE_FILES.items() if (d / f).is_file()}


def tables_of(d: Path) -> dict:
    return figures.read_tables(table_paths(d))


def outputs(stem: Path, *formats: str) -> dict[str, Path]:
    return {f: stem.with_suffix(f".{f}") for f in formats or ("png", "svg", "html")}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A planted study with every kind of variant, analysed: the tables the figures read."""
    d = tmp_path_factory.mktemp("study")
    variants = {**planted.MITIGATION_VARIANTS, "big_eps": {"optim.eps": 1e-4},
                "kappa_1e2": {"model.qk_kappa": 100.0}, "kappa_1e4": {"model.qk_kappa": 1e4}}
    runs, curves = planted.planted_study(variants, seeds=(0,))
    runs.write_parquet(d / "runs.parquet")
    curves.write_parquet(d / "curves.parquet")
    analyse_dir(d, {"name": "planted", "findings": list(range(1, 12)), "reference": "reference", "options": {}})
    return d


def test_every_figure_kind_compiles(study_dir):
    tables = tables_of(study_dir)
    for name in figures.BUILDERS:
        chart = figures.build(name, tables)
        spec = chart.to_dict()
        assert "No data for this figure" not in json.dumps(spec), name
        vega = vlc.vegalite_to_vega(spec)  # raises on an invalid spec
        assert vega["marks"], name


def test_png_svg_and_offline_html(study_dir, tmp_path):
    paths = figures.render_figure("forecast", table_paths(study_dir), outputs(tmp_path / "forecast"))
    assert [p.suffix for p in paths] == [".png", ".svg", ".html"]
    png, svg, html = (p.read_bytes() for p in paths)
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000
    assert svg.lstrip().startswith(b"<svg") and b"Forecast backtest" in svg
    # self-contained: Vega is inlined, nothing is fetched from a CDN
    assert len(html) > 200_000 and not re.search(rb"<script[^>]+src=\"https?://", html)


def test_missing_data_gives_a_placeholder(tmp_path):
    pl.DataFrame({"run_id": ["a"]}).write_parquet(tmp_path / "runs.parquet")
    paths = figures.render_figure("kappa", table_paths(tmp_path), outputs(tmp_path / "kappa", "png"))
    assert paths[0].read_bytes().startswith(PNG_MAGIC)
    spec = json.dumps(figures.build("kappa", tables_of(tmp_path)).to_dict())
    assert "No data for this figure" in spec
    with pytest.raises(ValueError, match="unknown figure"):
        figures.render_figure("nope", table_paths(tmp_path), outputs(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown figure tables"):  # an input no figure reads
        figures.render_figure("kappa", {**table_paths(tmp_path), "fits": tmp_path / "fits.parquet"},
                              outputs(tmp_path / "kappa", "png"))


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
    tables = tables_of(study_dir)
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


# ---- issue 12 kind 5: failed runs never vanish, non-finite values never reach a chart ------

def _reject(token):
    raise ValueError(f"non-finite number in chart data: {token}")


def _strict(spec) -> dict:
    """The spec through a strict JSON parser: Python's json accepts NaN and Infinity unless told."""
    return json.loads(json.dumps(spec), parse_constant=_reject)


GROWS, NO_FINITE, NO_CURVE = "planted-s0-qk_ln-1000-0", "planted-s1-no_qk_ln-10000-1", "planted-s0-no_qk_ln-10000-1"


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """LRs 1e3 and 1e4, qk-layernorm on and off, every run diverged, shaped as real runs at
    these LRs end (tried with `stability train`): step 0 finite, then NaN and inf; one run grows
    for three logging steps first, one logs no finite value, one has no curve at all; the
    summary columns hold NaN and inf where older runs or other tools may write them."""
    d = tmp_path_factory.mktemp("diverged")
    v = {"qk_ln": {}, "no_qk_ln": {"model.qk_layernorm": "none"}}
    runs, curves = planted.planted_study(v, scales={"s0": (64, 2), "s1": (128, 2)}, lrs=[1e3, 1e4], seeds=(0, 1))
    inf, nan = float("inf"), float("nan")
    runs = with_outcome(runs.with_columns(
        diverged=pl.lit(True), final_loss=pl.lit(None, pl.Float64), diverged_step=pl.lit(60),
        max_attn_logit=pl.when(pl.col("variant") == "qk_ln").then(2.6).otherwise(inf),
        max_attn_logit_at_probe=pl.lit(nan), grad_rms_final=pl.lit(nan), update_rms_final=pl.lit(inf)))
    rank = pl.col("step").rank("dense").over("run_id")
    keep = ((rank == 1) & (pl.col("run_id") != NO_FINITE)) | ((pl.col("run_id") == GROWS) & (rank <= 3))
    floats = [c for c, t in curves.schema.items() if t == pl.Float64 and c != "lr"]
    curves = curves.filter((rank <= 5) & (pl.col("run_id") != NO_CURVE)).with_columns(
        pl.when(keep).then(pl.col(c)).otherwise(inf if c == "max_attn_logit" else nan).alias(c) for c in floats)
    runs.write_parquet(d / "runs.parquet")
    curves.write_parquet(d / "curves.parquet")
    analyse_dir(d, {"name": "diverged", "findings": [1, 8, 10], "reference": "qk_ln", "options": {}})
    return d, runs


def test_no_non_finite_value_reaches_any_chart(diverged, study_dir, tmp_path):
    for d in (diverged[0], study_dir):
        tables = tables_of(d)
        for name in figures.BUILDERS:
            _strict(figures.build(name, tables).to_dict())  # raises on NaN / Infinity
    spec = figures.forecast_chart({**_forecast(study_dir), "threshold": float("nan")}).to_dict()
    fc = _forecast(study_dir)
    fc["fits"][0]["points"][0]["logit"] = float("inf")  # in Python, inf > 0
    fc["backtest"][0]["observed_max_logit"] = float("inf")
    for spec in (spec, figures.forecast_chart(fc).to_dict()):
        _strict(spec)
    # the exported HTML's inline spec, data included, is strict JSON too
    html = figures.render_figure("attn_logit_vs_step", table_paths(diverged[0]),
                                 outputs(tmp_path / "a", "html"))[0].read_text()
    at = re.search(r"(?:var|const|let) spec = ", html).end()
    spec, _ = json.JSONDecoder(parse_constant=_reject).raw_decode(html[at:])
    assert len(_rows(spec)) > len(diverged[1])


def _drawn(spec) -> dict[str, set[str]]:
    """run_id -> the kinds of mark rows it has in a spec."""
    out: dict[str, set[str]] = {}
    for r in _rows(spec):
        if r.get("run_id"):
            out.setdefault(r["run_id"], set()).add(r.get("kind"))
    return out


def test_every_run_appears_in_every_figure_when_every_run_diverges(diverged):
    d, runs = diverged
    tables = tables_of(d)
    every = set(runs["run_id"])
    largest = set(runs.filter(pl.col("scale") == "s1")["run_id"])
    for name, expected in [("attn_logit_vs_step", every), ("logz_vs_step", largest), ("attn_logit_vs_lr", every),
                           ("grad_rms_vs_size", every), ("update_rms", every), ("lr_vs_loss", every)]:
        spec = figures.build(name, tables).to_dict()
        drawn = _drawn(spec)
        assert set(drawn) == expected, name
        if name in ("attn_logit_vs_step", "logz_vs_step"):  # every failed run ends in a cross
            assert all("end" in kinds for kinds in drawn.values()), name
        else:
            assert {r["outcome"] for r in _rows(spec) if r.get("kind") == "run"} == {"failed"}, name
    spec = figures.build("sensitivity_vs_size", tables).to_dict()
    cells = {(r["variant"], r["scale"], r["seed"]) for r in _rows(spec) if r["kind"] == "seed" and r["all_failed"]}
    assert cells == set(runs.select("variant", "scale", "seed").iter_rows())
    assert "No LR trained" in json.dumps(spec["title"])
    # no finite value, or no curve at all: a cross at the top edge, where the run stopped
    spec = figures.build("attn_logit_vs_step", tables).to_dict()
    top = {d_["scale"]["domain"][1] for d_ in _walk(spec) if isinstance(d_.get("scale"), dict)
           and d_["scale"].get("type") == "log"}
    edge = {r["run_id"]: r for r in _rows(spec) if r.get("note")}
    assert set(edge) == {NO_FINITE, NO_CURVE} and {r["logit"] for r in edge.values()} == top
    assert edge[NO_CURVE]["step"] == 60  # diverged_step


def test_one_point_runs_are_points_and_coinciding_markers_sit_side_by_side(diverged):
    d, runs = diverged
    spec = figures.build("attn_logit_vs_step", tables_of(d)).to_dict()
    drawn = _drawn(spec)
    assert drawn[GROWS] == {"curve", "end"}
    # a run stopped at its first non-finite step has one finite value: a point, not a one-point line
    single = {r for r, kinds in drawn.items() if "single" in kinds}
    assert single == set(runs["run_id"]) - {GROWS, NO_FINITE, NO_CURVE}
    # every LR of one seed starts from the same initialisation: their markers must not coincide
    for shape in ("cross", None):
        offsets = [m.get("xOffset") for x in _walk(spec) if isinstance(m := x.get("mark"), dict)
                   and m.get("type") == "point" and m.get("shape") == shape]
        assert len(offsets) == 2 and len(set(offsets)) == 2, shape


# ---- issue 11 point 7: the figures show what each redesigned check reads ------------------

def _claim(d, n: int) -> dict:
    return next(c for c in json.loads((d / "claims.json").read_text())["claims"] if c["finding"] == n)


def _planted_dir(tmp_path, variants, findings, reference, **kw):
    runs, curves = planted.planted_study(variants, **kw)
    runs.write_parquet(tmp_path / "runs.parquet")
    curves.write_parquet(tmp_path / "curves.parquet")
    analyse_dir(tmp_path, {"name": "p", "findings": findings, "reference": reference, "options": {}})
    return runs, tables_of(tmp_path)


def test_kappa_draws_the_free_and_zero_layer_models_as_references(tmp_path):
    v = {"free": {"model.qk_layernorm": "none"}, "kappa_100": {"model.qk_layernorm": "none", "model.qk_kappa": 100.0},
         "kappa_1e4": {"model.qk_layernorm": "none", "model.qk_kappa": 1e4},
         "zero_layer": {"model.qk_layernorm": "none", "model.n_layers": 0}}
    runs, _ = planted.planted_study(v, scales={"s0": (64, 2)}, lrs=[1e-2, 3e-2, 1e-1], seeds=(0, 1, 2))
    runs = with_outcome(runs.with_columns(  # a real zero-layer model keeps its final norm: 64 non-embedding parameters
        diverged=pl.col("diverged") | ((pl.col("variant") == "kappa_1e4") & (pl.col("seed") == 2)),
        non_embedding_params=pl.when(pl.col("variant") == "zero_layer").then(64.0).otherwise("non_embedding_params")))
    spec = figures.kappa_chart(runs).to_dict()
    rows = [r for r in _rows(spec) if r["kind"] == "seed"]
    refs = {(r["reference"], r["seed"]) for r in rows if r["reference"]}
    assert refs == {(name, s) for name in figures.KAPPA_REFERENCES for s in (0, 1, 2)}  # every seed of both
    assert {(r["kappa"], r["seed"]) for r in rows if r["kappa"]} == {(k, s) for k in (100.0, 1e4) for s in (0, 1, 2)}
    assert [r["outcome"] for r in rows if r["kappa"] == 1e4 and r["seed"] == 2] == ["failed"]
    rules = [d for d in _walk(spec) if d.get("mark") in ("rule", {"type": "rule"}) or
             (isinstance(d.get("mark"), dict) and d["mark"].get("type") == "rule")]
    assert rules and "strokeDash" in rules[0]["encoding"]  # the reference lines
    # the zero-layer model does not relabel its scale
    assert [d for d in _scale_domains(spec, "color") if "params" in str(d)] == [["98k params"]]


def test_best_lr_is_drawn_per_seed_with_the_grid_edges(tmp_path):
    v = {"standard": {}, "mup_full": {"model.parametrization": "mup_full"}}
    runs, tables = _planted_dir(tmp_path, v, [6], "standard", scales={"s0": (64, 2), "w256": (256, 2)},
                                lrs=[3e-3, 1e-2, 3e-2, 1e-1], seeds=(0, 1, 2), noise_sd=0.01)
    spec = figures.build("best_lr_vs_size", tables).to_dict()
    seeds = {(r["variant"], r["scale"], r["seed"]): r for r in _rows(spec) if r.get("kind") == "seed"}
    assert set(seeds) == set(runs.select("variant", "scale", "seed").iter_rows())
    # the same optima finding 6's verdict reads
    per_seed = _claim(tmp_path, 6)["measured"]["optimal_lr_per_seed"]
    for (v_, sc, sd), r in seeds.items():
        assert r["lr_opt"] == pytest.approx(per_seed[v_][str(sd)][sc])
    # standard's optimum at w256 (lr* = 1e-2 / 2 under the planted physics) sits on the grid's bottom edge
    assert {seeds[("standard", "w256", s)]["status"] for s in (0, 1, 2)} <= {"lower", "inside"}
    assert any(r["status"] == "lower" for r in seeds.values())
    edges = sorted(r["edge"] for r in _rows(spec) if "edge" in r)
    assert edges == [3e-3, 1e-1]
    assert "Drift across sizes" in json.dumps(spec["title"])
    assert "best_lr_vs_size" in FIGURES_BY_FINDING[6]


def test_warmup_effect_shows_the_paired_differences_the_verdict_reads(tmp_path):
    v = {"warmup_30": {}, "warmup_3": {"optim.warmup_steps": 3}}
    runs, tables = _planted_dir(tmp_path, v, [3], "warmup_30", scales={"s0": (64, 2), "s2": (128, 3)},
                                lrs=[1e-2, 3e-2, 1e-1, 3e-1], seeds=(0, 1, 2), noise_sd=0.03)
    spec = figures.build("warmup_effect", tables).to_dict()
    pts = [r for r in _rows(spec) if r.get("kind") == "seed"]
    assert {(r["scale"], r["seed"]) for r in pts} == {(s, k) for s in ("s0", "s2") for k in (0, 1, 2)}
    effect = _claim(tmp_path, 3)["effect"]
    assert sum(r["diff"] for r in pts) / len(pts) == pytest.approx(effect["estimate"])
    assert f"{effect['estimate']:+.3f} nats, 95% interval {effect['lo']:+.3f}" in json.dumps(spec["title"])
    assert "warmup_effect" in FIGURES_BY_FINDING[3]


def test_width_and_depth_ladders_draw_each_seed_and_the_verdicts_slope_difference(tmp_path):
    scales = {"s0": (64, 2), "w128": (128, 2), "d8": (64, 8)}
    runs, tables = _planted_dir(tmp_path, {"default": {}}, [5], "default", scales=scales,
                                lrs=[3e-3, 1e-2, 3e-2, 1e-1, 3e-1], seeds=(0, 1, 2), noise_sd=0.03)
    spec = figures.build("sensitivity_vs_size", tables).to_dict()
    seeds = {(r["variant"], r["scale"], r["seed"]) for r in _rows(spec) if r.get("kind") == "seed"}
    assert seeds == {(lad, s, k) for lad, members in (("width ladder (2 layers)", ("s0", "w128")),
                                                      ("depth ladder (width 64)", ("s0", "d8")))
                     for s in members for k in (0, 1, 2)}
    assert any(d.get("detail") == {"field": "seed", "type": "nominal"} for d in _walk(spec))  # each seed's line
    effect = _claim(tmp_path, 5)["effect"]
    assert f"{effect['estimate']:+.3f} nats per decade, 95% interval {effect['lo']:+.3f}" in json.dumps(spec["title"])
