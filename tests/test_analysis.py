"""Analysis layer: aggregation, LR sensitivity, fits, forecast, claims, findings page.

Small hand-built tables with answers known in advance (see stability/analysis/planted.py
for the closed-form "physics" of the planted study).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import scipy.stats
from helpers import REPO

from stability.analysis import analyse_study, planted
from stability.analysis.aggregate import aggregate, read_config, with_initial_logz, write_study_tables
from stability.analysis.claims import claims
from stability.analysis.fits import crossing, fit_loglog, fit_table
from stability.analysis.forecast import forecast
from stability.analysis.sensitivity import SENSITIVITY_COLUMNS, optimal_lr, sensitivity_table, with_outcome
from stability import config as C
from stability.config import ConfigError, RunConfig, dump_yaml
from stability.io import write_json
from stability.findings_doc import (by_study, load_supplements, render_findings, rule_inputs, supplement_claims,
                                    supplement_figures, supplement_sources, write_findings)

INFO = {"name": "planted", "findings": [], "reference": "reference", "options": {}}


def info(*findings: int, **options) -> dict:
    return {**INFO, "findings": list(findings), "options": options}


@pytest.fixture(scope="module")
def mitigations():
    runs, _ = planted.planted_study()
    return runs, sensitivity_table(runs)


def analyse(runs: pl.DataFrame, study_info: dict) -> dict[int, dict]:
    sens = sensitivity_table(runs)
    fits = fit_table(runs, sens, study_info["options"], "planted")
    fc = forecast(runs, study_info)
    return {c["finding"]: c for c in claims(study_info, runs, sens, fits, fc)}


# ---- sensitivity -------------------------------------------------------------------------

def test_a_run_that_stalls_near_init_loss_counts_as_failed():
    # best 3.0; a run must close half the 5.0 -> 3.0 gap (reach 4.0) to count as trained.
    rows = [{"study": "s", "scale": "a", "variant": "v", "lr": lr, "seed": 0, "final_loss": f, "init_loss": 5.0,
             "diverged": False, "non_embedding_params": 1000} for lr, f in [(1e-2, 3.0), (1e-1, 3.9), (1.0, 4.2)]]
    out = with_outcome(pl.DataFrame(rows)).sort("lr")
    assert out["failed"].to_list() == [False, False, True]
    # every failure counts as loss_0, stalled or stopped, so early stopping cannot change the metric
    assert out["loss_capped"].to_list() == [3.0, 3.9, 5.0]


def test_sensitivity_of_a_hand_computed_grid():
    # seed 0: capped [3.0, 2.5, 5.0 (NaN -> init)] - 2.5 -> [0.5, 0, 2.5] -> 1.0
    # seed 1: capped [3.2, 2.4, 5.0 (6.0 capped)] - 2.4 -> [0.8, 0, 2.6] -> 3.4 / 3
    rows = []
    for seed, finals, diverged in ((0, [3.0, 2.5, float("nan")], [False, False, True]),
                                   (1, [3.2, 2.4, 6.0], [False, False, False])):
        for lr, f, d in zip([1e-3, 1e-2, 1e-1], finals, diverged):
            rows.append({"study": "s", "scale": "a", "variant": "v", "lr": lr, "seed": seed, "final_loss": f,
                         "init_loss": 5.0, "diverged": d, "non_embedding_params": 1000})
    sens = sensitivity_table(with_outcome(pl.DataFrame(rows)))
    assert sens.schema == pl.Schema(SENSITIVITY_COLUMNS)
    row = sens.row(0, named=True)
    assert row["sensitivity"] == pytest.approx((1.0 + 3.4 / 3) / 2)
    assert row["sensitivity_lo"] == pytest.approx(1.0)
    assert row["sensitivity_hi"] == pytest.approx(3.4 / 3)
    # seed 1's 6.0 ended above loss_0: not flagged diverged by training, but it failed.
    assert (row["n_lrs"], row["n_seeds"], row["n_diverged"]) == (3, 2, 2)
    assert row["best_lr"] == 1e-2 and row["best_loss"] == pytest.approx(2.45)
    assert row["init_loss"] == 5.0


def test_null_final_loss_counts_as_init_and_missing_summaries_are_dropped():
    base = {"study": "s", "scale": "a", "variant": "v", "seed": 0, "non_embedding_params": 10, "diverged": False}
    runs = pl.DataFrame([{**base, "lr": 1e-3, "final_loss": 3.0, "init_loss": 5.0},
                         {**base, "lr": 1e-2, "final_loss": None, "init_loss": 5.0},
                         {**base, "lr": 1e-1, "final_loss": None, "init_loss": None}])  # never finished
    runs = with_outcome(runs)
    assert runs["failed"].to_list() == [False, True, None] and runs["loss_capped"].to_list() == [3.0, 5.0, None]
    row = sensitivity_table(runs).row(0, named=True)
    assert row["sensitivity"] == pytest.approx(1.0)  # [0, 2] / 2
    assert (row["n_lrs"], row["n_diverged"]) == (2, 1)


def test_optimal_lr_quadratic_vertex_and_fallbacks():
    lrs = np.array([1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    loss = (np.log10(lrs) + 1.8) ** 2 + 2
    best, fit = optimal_lr(lrs, loss)
    assert best == 1e-2 and fit == pytest.approx(10 ** -1.8)
    # failed neighbours leave the fit with < 3 points: fall back to the argmin
    assert optimal_lr(lrs, loss, np.array([1, 1, 0, 1, 1], bool)) == (1e-2, 1e-2)
    # a parabola that opens downward is no optimum
    assert optimal_lr(lrs[:3], np.array([3.0, 4.0, 3.5])) == (1e-3, 1e-3)


def test_sensitivity_on_the_planted_study(mitigations):
    _, sens = mitigations
    ref = sens.filter(pl.col("variant") == "reference").sort("non_embedding_params")
    # planted optimum lr* = 1e-2 * (N / N0)^-0.5, recovered by the quadratic fit
    n = ref["non_embedding_params"].to_numpy()
    assert ref["best_lr_fit"].to_numpy() == pytest.approx(1e-2 * (n / planted.N0) ** -0.5, rel=1e-6)
    no_qk = sens.filter(pl.col("variant") == "no_qk_ln").sort("non_embedding_params")
    assert no_qk["n_diverged"].to_list() == [0, 0, 2, 4]  # logit > 1e4: lr 0.3 at s2; 0.1, 0.3 at s3


# ---- fits --------------------------------------------------------------------------------

def test_fit_recovers_planted_quadratic_and_crossing():
    n = np.array([1e5, 1e6, 1e7, 1e8])
    x = np.log10(n)
    y = 10 ** (0.25 * x ** 2 - 2.0 * x + 5.0)
    fit = fit_loglog(n, y, 2)
    assert fit.degree == 2 and fit.r2 == pytest.approx(1.0)
    assert fit.coef == pytest.approx([0.25, -2.0, 5.0], abs=1e-8)
    assert fit.predict(1e9) == pytest.approx(10 ** (0.25 * 81 - 18 + 5), rel=1e-6)
    # log10 y = 4 -> 0.25 x^2 - 2 x + 1 = 0 -> x = 4 + sqrt(12)
    assert crossing(fit, 1e4) == pytest.approx(10 ** (4 + math.sqrt(12)), rel=1e-6)
    # two sizes only: the fit drops to a line; one size: no fit
    assert fit_loglog(n[:2], y[:2], 2).degree == 1
    assert fit_loglog(n[:1], y[:1], 2) is None


def test_crossing_downward_and_already_past():
    line = fit_loglog([1e2, 1e4], [1e-2, 1e-4], 1)  # y = 1 / N
    assert crossing(line, 1e-8, upward=False) == pytest.approx(1e8)
    assert crossing(line, 1.0, upward=False) == pytest.approx(1e2)  # below 1 from the smallest size on
    assert crossing(line, 1.0, upward=True) is None  # falling: never rises to 1


def test_fit_table_on_the_planted_study(mitigations):
    runs, sens = mitigations
    fits = fit_table(runs, sens, {"forecast_targets": {"big": 1e8}}, "planted")
    assert {"attn_logit", "grad_rms", "lowest_diverging_lr", "best_loss"} <= set(fits["kind"])
    att = fits.filter((pl.col("kind") == "attn_logit") & (pl.col("variant") == "no_qk_ln") & (pl.col("lr") == 1e-2))
    assert att["coef"][0][0] == pytest.approx(0.25, abs=1e-6)  # planted 0.25 x^2
    assert att["target_name"].to_list() == ["big"] and att["predicted_exceeds"][0] is True
    g = fits.filter((pl.col("kind") == "grad_rms") & (pl.col("variant") == "reference"))
    assert all(c[0] == pytest.approx(-1.0) for c in g["coef"].to_list())  # grad RMS ~ 1/N
    assert g["threshold"].to_list() == [1e-8] * g.height
    low = fits.filter((pl.col("kind") == "lowest_diverging_lr") & (pl.col("variant") == "no_qk_ln"))
    assert low["n_sizes"][0] == 2 and low["coef"][0][0] < 0  # the failing LR drops with size


# ---- forecast ----------------------------------------------------------------------------

def test_forecast_predicts_the_planted_divergence(mitigations):
    runs, _ = mitigations
    fc = forecast(runs, info(8, forecast_targets={"x4": 4 * 6291456.0}))
    assert fc["status"] == "ok" and fc["backtest_status"] == "ok"
    assert fc["variants"] == ["no_qk_ln"] and fc["held_out_params"] == max(fc["sizes"])
    bt = {e["lr"]: e for e in fc["backtest"]}
    assert [lr for lr, e in bt.items() if e["predicted_diverged"]] == [0.1, 0.3]
    assert [lr for lr, e in bt.items() if e["observed_diverged"]] == [0.1, 0.3]
    for e in bt.values():
        assert e["log10_error"] < 0.5  # a line through 3 sizes under-reads the planted curvature
        assert e["interval"][0] < e["predicted"] < e["interval"][1]
        assert e["degree"] == 1 and len(e["curve"]) > 2
    assert fc["score"] == 1.0 and fc["n_scored"] == 6
    assert {f["target"] for f in fc["forecasts"]} == {"x4"}
    json.dumps(fc)  # plain JSON


def test_forecast_backtest_scores_a_wrong_prediction(mitigations):
    runs, _ = mitigations
    held = runs["non_embedding_params"].max()
    # the held-out LR 0.1 runs survive although the fit says they cross 1e4
    flip = (pl.col("variant") == "no_qk_ln") & (pl.col("lr") == 0.1) & (pl.col("non_embedding_params") == held)
    runs = with_outcome(runs.with_columns(diverged=pl.when(flip).then(False).otherwise(pl.col("diverged")),
                                          final_loss=pl.when(flip).then(3.0).otherwise(pl.col("final_loss"))))
    fc = forecast(runs, info(8))
    assert fc["score"] == pytest.approx(5 / 6)
    assert [e["correct"] for e in fc["backtest"] if e["lr"] == 0.1] == [False]


def test_forecast_degrades_with_few_scales(mitigations):
    runs, _ = mitigations
    one = forecast(runs.filter(pl.col("scale") == "s0"), info(8))
    assert one["status"] == "insufficient_scales"
    two = forecast(runs.filter(pl.col("scale").is_in(["s0", "s1"])), info(8))
    assert two["status"] == "ok" and two["backtest_status"] == "insufficient_scales"
    assert all(f["degree"] == 1 for f in two["fits"]) and any("linear" in n for n in two["notes"])
    three = forecast(runs.filter(pl.col("scale") != "s3"), info(8))
    assert three["backtest_status"] == "insufficient_scales"  # 2 fitted sizes leave a line no residual
    assert forecast(runs, info(1))["status"] == "not_requested"
    assert forecast(runs, info(1, forecast=True))["status"] == "ok"


# ---- claims ------------------------------------------------------------------------------

def test_claims_reproduced_on_the_mitigation_study():
    runs, _ = planted.planted_study({**planted.MITIGATION_VARIANTS, "big_eps": {"optim.eps": 1e-4}})
    got = analyse(runs, info(1, 2, 3, 4, 8, 10, 11))
    assert {f: c["outcome"] == "reproduced" for f, c in got.items()} == {1: True, 2: True, 3: True, 4: True, 8: True, 10: False,
                                                             11: True}
    assert got[1]["measured"]["logit_ratio"] > 1e3
    # eps 1e-4 is ~25x the grad RMS: its update collapse is a mechanism demo, the loss test is not run
    assert got[10]["outcome"] == "partial"
    assert {k: s["outcome"] for k, s in got[10]["subchecks"].items()} == {
        "falls_with_size": "reproduced", "falls_with_lr": "reproduced", "eps_harm": "not run",
        "update_collapse": "not testable"}
    for c in got.values():
        assert c["statement"] and c["quantity"] and isinstance(c["measured"], dict)
        json.dumps(c)


def test_claims_for_scaling_knobs():
    scales = {"w0": (64, 2), "w1": (128, 2), "d1": (64, 4), "d2": (64, 8)}  # both ladders span 4x params
    variants = {"reference": {}, "mup": {"model.parametrization": "mup_simple"}, "long": {"train.steps": 600},
                "k2": {"model.qk_kappa": 100.0}, "k3": {"model.qk_kappa": 1000.0}, "k4": {"model.qk_kappa": 1e4}}
    runs, _ = planted.planted_study(variants, scales=scales)
    got = analyse(runs, info(5, 6, 7, 9))
    assert {f: c["outcome"] == "reproduced" for f, c in got.items()} == {5: True, 6: True, 7: True, 9: False}
    assert got[5]["measured"]["depth_scales"] == ["w0", "d1", "d2"]
    assert got[6]["measured"]["stability_mup"]["per_seed"][0]["range_mup"] == pytest.approx(0.0, abs=1e-6)
    assert got[9]["outcome"] == "partial"  # the onset reproduces; no zero-layer model to compare kappa 1e4 with
    assert got[9]["subchecks"]["onset"]["outcome"] == "reproduced"


def test_claims_not_reproduced_when_the_effect_is_absent():
    variants = {"reference": {}, "no_qk_ln": {"model.qk_layernorm": "none"}, "worse_ref": {"optim.warmup_steps": 5}}
    runs, _ = planted.planted_study(variants)
    # erase the planted logit growth: without qk-ln the logits now match the reference's
    ref = runs.filter(pl.col("variant") == "reference").select("scale", "lr", "seed", ref_logit="max_attn_logit")
    runs = with_outcome(runs.join(ref, on=["scale", "lr", "seed"], how="left")
                        .with_columns(max_attn_logit=pl.col("ref_logit"), diverged=pl.lit(False),
                                      final_loss=pl.coalesce("final_loss", pl.lit(3.0))).drop("ref_logit"))
    got = analyse(runs, {**info(1, 11), "reference": "worse_ref"})
    assert got[1]["outcome"] == "not reproduced" and got[1]["measured"]["logit_ratio"] == pytest.approx(1.0)
    assert got[11]["outcome"] == "not reproduced"  # the "all mitigations" reference is the more sensitive one


def test_aggregate_reads_initial_logz_from_the_first_metrics_row():
    runs = pl.DataFrame({"run_id": ["a", "b", "c"], "lr": [0.1, 0.1, 0.1]})
    curves = pl.DataFrame({"run_id": ["a", "a", "b", "b"], "step": [0, 10, 0, 10], "z_loss": [36.0, 1.0, 4.0, 9.0]})
    out = with_initial_logz(runs, curves)
    assert out["logz_rms_init"].to_list() == [6.0, 2.0, None] and out["run_id"].to_list() == ["a", "b", "c"]
    assert with_initial_logz(runs, curves.drop("z_loss")).columns == runs.columns


def test_claims_without_the_needed_variants_are_null(mitigations):
    runs, _ = planted.planted_study({"reference": {}})
    got = analyse(runs, info(1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12))
    assert all(c["outcome"] == "not run" and c["note"] for f, c in got.items() if f != 5)
    assert got[5]["outcome"] == "inconclusive" and "depth ladder" in got[5]["note"]  # one depth: no trend
    assert analyse(pl.DataFrame(), info(1))[1]["note"] == "no finished runs"


# ---- aggregate ---------------------------------------------------------------------------

def _fake_run(runs_dir, run_id: str, n_layers: int, n_rows: int, summary: bool = True) -> dict:
    d = runs_dir / run_id
    d.mkdir(parents=True)
    cfg = RunConfig()
    cfg.model.n_layers = n_layers
    (d / "config.yaml").write_text(dump_yaml(cfg))
    steps = np.arange(n_rows) * 10
    # probe-step logits every 3rd log row, val_loss every 50th: sparse columns
    cols = {"step": steps, "lr": np.full(n_rows, 0.01), "loss": np.linspace(5, 3, n_rows),
            "max_attn_logit": [float(i) if i % 3 == 0 else None for i in range(n_rows)],
            "val_loss": [3.0 if i % 50 == 0 else None for i in range(n_rows)]}
    cols.update({f"attn_logit_l{i}": np.full(n_rows, float(i)) for i in range(n_layers)})
    pl.DataFrame(cols).write_parquet(d / "metrics.parquet")
    if summary:
        (d / "summary.json").write_text(json.dumps({
            "run_id": run_id, "init_loss": 5.5, "final_loss": 3.0 if n_layers == 2 else None, "diverged": False,
            "max_attn_logit_at_probe": 4 if n_layers == 2 else 4.5, "non_embedding_params": 100 * n_layers,
            "versions": {"torch": "2.5"}}))
    return {"study": "st", "run_id": run_id, "scale": f"L{n_layers}", "variant": "v", "lr": 0.01, "seed": 0}


def test_aggregate_fake_runs(tmp_path):
    runs_dir = tmp_path / "runs"
    manifest = [_fake_run(runs_dir, "aaaaaaaaaaaa", 2, 450), _fake_run(runs_dir, "bbbbbbbbbbbb", 3, 12),
                _fake_run(runs_dir, "cccccccccccc", 2, 5, summary=False)]
    runs, curves = aggregate(manifest, runs_dir)
    assert runs.height == 3 and runs["run_id"].to_list() == [m["run_id"] for m in manifest]
    assert runs["model.n_layers"].to_list() == [2, 3, 2] and runs["versions.torch"].to_list() == ["2.5", "2.5", None]
    assert runs.schema["max_attn_logit_at_probe"] == pl.Float64  # 4 and 4.5 in one column
    assert runs["seed"].to_list() == [0, 0, 0]  # the manifest's, not duplicated from the config
    assert runs["failed"].to_list() == [False, True, None]  # the unfinished run has no outcome
    per_run = dict(curves.group_by("run_id").len().iter_rows())
    assert per_run["aaaaaaaaaaaa"] <= 200 and (per_run["bbbbbbbbbbbb"], per_run["cccccccccccc"]) == (12, 5)
    a = curves.filter(pl.col("run_id") == "aaaaaaaaaaaa")
    assert a["step"][0] == 0 and a["step"][-1] == 4490 and a["step"].is_sorted()
    # thinning keeps every eval row (9) and >= a third of the budget of probe rows
    assert a["val_loss"].count() == 9 and a["max_attn_logit"].count() >= 200 // 3
    assert curves.filter(pl.col("run_id") == "bbbbbbbbbbbb")["attn_logit_l2"].to_list() == [2.0] * 12
    assert a["attn_logit_l2"].null_count() == a.height
    assert {"study", "scale", "variant", "lr", "seed", "lr_step"} <= set(curves.columns)
    out = write_study_tables(manifest, runs_dir, tmp_path / "study")
    assert [p.name for p in out] == ["runs.parquet", "curves.parquet"]
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == ["curves.parquet", "runs.parquet"]
    write_study_tables(manifest, runs_dir, tmp_path / "r.parquet", tmp_path / "c.parquet")
    assert pl.read_parquet(tmp_path / "c.parquet").height == curves.height


def test_run_config_comes_from_the_summary_else_from_config_yaml(tmp_path):
    cfg = RunConfig()
    cfg.data.path = "a: b"  # a value that needs quoting
    cfg.optim.lr = 3e-4
    cfg.train.precision = "bf16"
    flat = C.flatten(cfg.to_dict())
    typed = lambda d: {k: (type(v), v) for k, v in d.items()}  # True is not 1, 1.0 is not 1
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir(), old.mkdir()
    write_json(new / "summary.json", {"run_id": "x", "config": flat})
    (new / "config.yaml").write_text("model: [not, read]\n")  # the summary's copy wins
    (old / "config.yaml").write_text(dump_yaml(cfg))  # a run finished before summaries carried the config
    got_new = read_config(new, json.loads((new / "summary.json").read_text()))
    got_old = read_config(old, {"run_id": "x"})
    assert typed(got_new) == typed(got_old) == typed(flat)
    assert list(got_new) == list(got_old) == list(flat)  # same column order
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.yaml").write_text("model:\n  d_model: 8\n  lr: 1e-3\ntags:\n  - a\n  - b\nempty:\n")
    assert read_config(odd, {}) == {"model.d_model": 8, "model.lr": 1e-3, "tags": ["a", "b"], "empty": None}
    assert read_config(tmp_path / "missing", {}) == {}


def test_aggregate_reads_new_and_old_summaries_alike(tmp_path):
    runs_dir = tmp_path / "runs"
    manifest = [_fake_run(runs_dir, "aaaaaaaaaaaa", 2, 5), _fake_run(runs_dir, "bbbbbbbbbbbb", 3, 5)]
    old, _ = aggregate(manifest, runs_dir)
    for m in manifest:  # rewrite both as `stability train` does now: the config inside summary.json
        d = runs_dir / m["run_id"]
        summary = json.loads((d / "summary.json").read_text())
        summary["config"] = read_config(d, summary)
        (d / "summary.json").write_text(json.dumps(summary))
        (d / "config.yaml").unlink()
    new, _ = aggregate(manifest, runs_dir)
    assert new.columns == old.columns and new.equals(old)
    assert not [c for c in new.columns if c.startswith("config.")]
    # run outcomes, once: the 3-layer run has no final loss (failed, scored at loss_0)
    assert new["failed"].to_list() == [False, True] and new["loss_capped"].to_list() == [3.0, 5.5]


# ---- the whole step and the findings page ------------------------------------------------

def test_analyse_study_writes_every_output(tmp_path, mitigations):
    runs, _ = mitigations
    runs.write_parquet(tmp_path / "in.parquet")
    # any paths: the rule's declared outputs, not names the package picks
    outputs = {k: tmp_path / "out" / f"{k}.x" for k in ("sensitivity", "fits", "forecast", "forecast_table", "claims")}
    (tmp_path / "out").mkdir()
    out = analyse_study(tmp_path / "in.parquet", outputs, info(1, 8, 11))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in outputs.values())
    doc = json.loads(outputs["claims"].read_text())
    assert [c["finding"] for c in doc["claims"]] == [1, 8, 11] and out["n_runs"] == runs.height
    assert json.loads(outputs["forecast"].read_text())["score"] == 1.0
    assert pl.read_parquet(outputs["sensitivity"]).height > 0
    with pytest.raises(KeyError, match="claims"):
        analyse_study(tmp_path / "in.parquet", {k: v for k, v in outputs.items() if k != "claims"}, info(1))


def test_findings_page(tmp_path, mitigations):
    runs, sens = mitigations
    items = claims(info(1, 3), runs, sens, None, None)
    study = tmp_path / "results" / "studies" / "mit"
    (study / "figures").mkdir(parents=True)
    (study / "claims.json").write_text(json.dumps({"study": "mit", "claims": items}))
    (study / "figures" / "lr_vs_loss.png").write_bytes(b"png")
    text = render_findings({"mit": items}, {"mit": [study / "figures" / "lr_vs_loss.png"]}, "make findings")
    assert "## 1. Attention-logit growth" in text and "### Study `mit`: reproduced" in text
    assert "make findings" in text and "lr_vs_loss.png" in text and "logit_ratio" in text
    out = write_findings({"mit": study / "claims.json"}, {"mit": [study / "figures" / "lr_vs_loss.png"]},
                         tmp_path / "docs" / "findings.md", command="make findings")
    assert "](../results/studies/mit/figures/lr_vs_loss.png)" in out.read_text()
    # With a figures folder the PNGs are copied beside the page and linked there.
    out = write_findings({"mit": study / "claims.json"}, {"mit": [study / "figures" / "lr_vs_loss.png"]},
                         tmp_path / "docs" / "findings.md", tmp_path / "docs" / "findings_figures", "make findings")
    assert "](findings_figures/mit/lr_vs_loss.png)" in out.read_text()
    assert (tmp_path / "docs" / "findings_figures" / "mit" / "lr_vs_loss.png").read_bytes() == b"png"


def test_findings_page_names_studies_as_given_not_by_folder(tmp_path, mitigations):
    runs, sens = mitigations
    d = tmp_path / "anywhere"
    d.mkdir()
    (d / "c.json").write_text(json.dumps({"study": "mit", "claims": claims(info(1), runs, sens, None, None)}))
    (d / "lr_vs_loss.png").write_bytes(b"png")
    named = rule_inputs({"renamed": str(d / "c.json")}, {"renamed": [str(d / "lr_vs_loss.png")]})
    assert by_study(named.items()) == ({"renamed": str(d / "c.json")}, {"renamed": [str(d / "lr_vs_loss.png")]})
    text = write_findings(*by_study(named.items()), tmp_path / "f.md", command="make").read_text()
    assert "### Study `renamed`: reproduced" in text and "](anywhere/lr_vs_loss.png)" in text


def test_findings_page_supplements(tmp_path, mitigations, monkeypatch):
    """Studies from another config file appear, marked, once their claims exist; until then
    the page names the command that makes them."""
    runs, sens = mitigations
    monkeypatch.chdir(tmp_path)
    (tmp_path / "long.yaml").write_text("results: res_long\nstudies: {mit_long: {scales: [s0], lrs: [0.1]}}\n")
    sups = load_supplements(["long.yaml"])
    cmd = "snakemake --cores 2 --configfile long.yaml"
    assert supplement_sources(sups) == {"mit_long": cmd} and supplement_claims(sups) == {}
    items = claims(info(1), runs, sens, None, None)
    text = render_findings({"mit": items}, {}, "make", sources=supplement_sources(sups))
    assert f"- `{cmd}` (not run yet)" in text and "(supplement)" not in text
    study = tmp_path / "res_long" / "studies" / "mit_long"
    (study / "figures").mkdir(parents=True)
    (study / "claims.json").write_text(json.dumps({"study": "mit_long", "claims": items}))
    (study / "figures" / "lr_vs_loss.png").write_bytes(b"png")
    assert supplement_claims(sups) == {"mit_long": "res_long/studies/mit_long/claims.json"}
    assert supplement_figures(sups) == {"mit_long": ["res_long/studies/mit_long/figures/lr_vs_loss.png"]}
    out = write_findings(supplement_claims(sups), supplement_figures(sups), tmp_path / "docs" / "f.md",
                         command="make", sources=supplement_sources(sups))
    text = out.read_text()
    assert "| mit_long (supplement) | reproduced |" in text and f"Supplement, produced by `{cmd}`." in text
    assert "(not run yet)" not in text and "lr_vs_loss.png" in text
    with pytest.raises(ConfigError, match=r"findings_supplements\[0\]: .* defines no `studies`"):
        (tmp_path / "empty.yaml").write_text("results: x\n")
        load_supplements(["empty.yaml"])


def test_compare_findings_script(tmp_path):
    for name, ok in (("a", "reproduced"), ("b", "not reproduced")):
        d = tmp_path / name / "studies" / "mit"
        d.mkdir(parents=True)
        (d / "claims.json").write_text(json.dumps({"claims": [{"finding": 1, "outcome": ok}]}))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_findings.py"), "a", "b"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "| 1. Attention-logit growth | mit | reproduced | not reproduced |" in proc.stdout
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_findings.py"), "a", "nope"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "nope: no studies/ folder" in bad.stderr


def test_a_failed_lr_is_never_the_best_lr():
    lrs = np.array([1e-3, 1e-2, 1e-1])
    # the failed LR's capped loss (loss_0 of a lucky seed) is the lowest: it still cannot win
    assert optimal_lr(lrs, np.array([3.0, 2.9, 2.5]), np.array([0, 0, 1], bool))[0] == 1e-2
    best, fit = optimal_lr(lrs, np.array([5.0, 5.0, 5.0]), np.array([1, 1, 1], bool))
    assert math.isnan(best) and math.isnan(fit)


def test_a_grid_where_every_run_failed_has_no_best_lr():
    rows = [{"study": "s", "scale": "s0", "variant": "v", "lr": lr, "seed": seed, "init_loss": 5.5,
             "final_loss": 9.0, "diverged": True, "non_embedding_params": 1000}
            for lr in (1e3, 1e4) for seed in (0, 1)]
    sens = sensitivity_table(with_outcome(pl.DataFrame(rows)))
    assert sens.height == 1
    row = sens.row(0, named=True)
    assert row["best_lr"] is None and row["best_lr_fit"] is None and row["best_loss"] is None
    assert row["n_diverged"] == 4 and row["n_lrs_trainable"] == 0
