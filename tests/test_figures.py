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
