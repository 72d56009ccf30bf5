"""Findings 1 (attention-logit growth) and 8 (forecast): decision rules on planted studies.

The planted physics (stability/analysis/planted.py): without qk-layernorm
log10 logit = 1 + (log10 lr + 3) + 0.3 x + 0.25 x^2 (x = decades of size above the
smallest), a run fails above 1e4; so at the 4 default sizes the variant without
qk-layernorm fails at LR 0.3 from s2 and at LR 0.1 and 0.3 at s3, and persistence
("s3 does what s2 did") misses LR 0.1 only.
"""
from __future__ import annotations

import json
import math

import polars as pl
import pytest

from stability.analysis import planted
from stability.analysis.findings import f01_attn_logit_growth as f1
from stability.analysis.findings import f08_forecast as f8
from stability.analysis.findings import run_checks
from stability.analysis.fits import degree_with_dof, fit_table
from stability.analysis.forecast import calibrate_threshold, failed_before_probe, forecast
from stability.analysis.sensitivity import sensitivity_table, with_outcome
from stability.analysis.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

QK = {"reference": {}, "no_qk_ln": {"model.qk_layernorm": "none"}}
FIVE_SIZES = {"s_": (32, 2), **planted.DEFAULT_SCALES}


def study(findings=(1, 8), **options) -> dict:
    return {"name": "planted", "findings": list(findings), "reference": "reference", "options": options}


def check(runs: pl.DataFrame, findings=(1, 8), **options) -> dict[int, dict]:
    info = study(findings, **options)
    runs = with_outcome(runs)  # as the aggregation does: the tests edit the summary columns
    sens = sensitivity_table(runs)
    fits = fit_table(runs, sens, options, "planted")
    fc = forecast(runs, info)
    return {c["finding"]: c for c in run_checks(info, runs, sens, fits, fc)}


def held_out(runs: pl.DataFrame, lr: float) -> pl.Expr:
    return ((pl.col("variant") == "no_qk_ln") & (pl.col("lr") == lr)
            & (pl.col("non_embedding_params") == runs["non_embedding_params"].max()))


def set_outcome(runs: pl.DataFrame, lr: float, failed: bool) -> pl.DataFrame:
    """The held-out size's runs at lr made to fail (diverge) or train, logits untouched."""
    w = held_out(runs, lr)
    return runs.with_columns(diverged=pl.when(w).then(failed).otherwise(pl.col("diverged")),
                             final_loss=pl.when(w).then(None if failed else 3.0).otherwise(pl.col("final_loss")))


@pytest.fixture(scope="module")
def qk_runs():
    return planted.planted_study(QK)[0]


# ---- finding 1 -----------------------------------------------------------------------------

def test_f1_reproduced_with_every_subcheck(qk_runs):
    c = check(qk_runs, (1,))[1]
    assert c["outcome"] == REPRODUCED and c["n_seeds"] == 2
    assert {k: s["outcome"] for k, s in c["subchecks"].items()} == {
        "logit_growth": REPRODUCED, "lower_sensitivity": REPRODUCED, "failure_lr_falls_with_scale": REPRODUCED}
    m = c["measured"]
    # LR* is the highest LR where qk-layernorm trains at the largest size; pairs only where the other failed
    assert m["lr"] == 0.3 and m["scale"] == "s3"
    assert {p["scale"] for p in c["subchecks"]["logit_growth"]["pairs"] if p["off_failed"]} == {"s2", "s3"}
    assert c["effect"]["n"] == 4 and c["effect"]["lo"] > f1.LOG_RATIO_MIN
    assert m["lowest_diverging_lr_off"] == {"s0": None, "s1": None, "s2": 0.3, "s3": 0.1}
    json.dumps(c)


def test_f1_ratio_is_not_read_at_an_lr_where_qk_layernorm_fails(qk_runs):
    # qk-layernorm fails at LR 0.3 at the largest size: LR* drops to 0.1
    w = (pl.col("variant") == "reference") & (pl.col("lr") == 0.3) & (pl.col("scale") == "s3")
    runs = qk_runs.with_columns(diverged=pl.when(w).then(True).otherwise(pl.col("diverged")),
                                final_loss=pl.when(w).then(None).otherwise(pl.col("final_loss")))
    c = check(runs, (1,))[1]
    assert c["measured"]["lr"] == 0.1
    assert [p["scale"] for p in c["subchecks"]["logit_growth"]["pairs"] if p["off_failed"]] == ["s3", "s3"]


def test_f1_sensitivity_effect_above_and_below_seed_noise():
    # with the planted logit growth the runs without qk-layernorm fail at high LR: ~0.3 nats,
    # well above 0.1 nats of per-run loss noise
    noisy = planted.planted_study(QK, seeds=(0, 1, 2), noise_sd=0.1)[0]
    assert check(noisy, (1,))[1]["outcome"] == REPRODUCED
    # at half the logit growth no run fails; what is left is the planted 10% sharper LR curve
    # (~0.01 nats), far below 0.5 nats of per-run loss noise
    runs = planted.planted_study(QK, seeds=(0, 1, 2), noise_sd=0.5, logit_growth=0.5)[0]
    c = check(runs, (1,))[1]
    sens = c["subchecks"]["lower_sensitivity"]
    assert sens["interval"]["lo"] < 0 < sens["interval"]["hi"] and sens["interval"]["hi"] > f1.SENS_BAND
    assert sens["outcome"] == INCONCLUSIVE and c["outcome"] == INCONCLUSIVE


def test_f1_opposite_effect_is_not_reproduced(qk_runs):
    # swap which variant has qk-layernorm: the "off" variant now has the stable physics
    swap = pl.when(pl.col("variant") == "reference").then(pl.lit("none")).otherwise(pl.lit("per_head"))
    c = check(qk_runs.with_columns(**{"model.qk_layernorm": swap}), (1,))[1]
    assert c["outcome"] == NOT_REPRODUCED
    assert c["subchecks"]["lower_sensitivity"]["outcome"] == NOT_REPRODUCED


def test_f1_no_effect_is_not_reproduced(qk_runs):
    # logits and outcomes identical with and without qk-layernorm
    ref = qk_runs.filter(pl.col("variant") == "reference").drop("variant", "run_id", "model.qk_layernorm")
    same = pl.concat([qk_runs.filter(pl.col("variant") == "reference"),
                      ref.with_columns(variant=pl.lit("no_qk_ln"), run_id=pl.lit("x"),
                                       **{"model.qk_layernorm": pl.lit("none")})], how="diagonal")
    c = check(same, (1,))[1]
    assert c["subchecks"]["lower_sensitivity"]["outcome"] == NOT_REPRODUCED  # [0, 0] inside the band
    assert c["subchecks"]["failure_lr_falls_with_scale"]["outcome"] == INCONCLUSIVE
    assert c["outcome"] == NOT_REPRODUCED


@pytest.mark.parametrize("lowest, outcome", [
    ({"a": None, "b": 0.3, "c": 0.3, "d": 0.1}, REPRODUCED),
    ({"a": 0.3, "b": 0.3, "c": 0.3, "d": 0.1}, REPRODUCED),
    ({"a": 0.3, "b": 0.3}, INCONCLUSIVE),  # flat: below one grid step
    ({"a": 0.3, "b": 0.1, "c": 0.3, "d": 0.1}, INCONCLUSIVE),  # lower at the end, but it rose once
    ({"a": 0.1, "b": 0.3}, NOT_REPRODUCED),
    ({"a": 0.1, "b": None}, NOT_REPRODUCED),  # fails at the small size, not within the grid at the large
    ({"a": None, "b": None}, INCONCLUSIVE),
    ({"a": 0.1}, INCONCLUSIVE),  # a trend needs two sizes
])
def test_f1_failure_lr_trend(lowest, outcome):
    assert f1.failure_lr_trend(lowest)["outcome"] == outcome


def test_degenerate_studies_are_never_reproduced(qk_runs):
    one_lr = planted.planted_study(QK, lrs=[0.3])[0]
    all_failed = qk_runs.with_columns(diverged=pl.lit(True), final_loss=pl.lit(None, pl.Float64))
    one_scale = qk_runs.filter(pl.col("scale") == "s3")
    for runs in (one_lr, all_failed, one_scale):
        got = check(runs)
        assert {f: c["outcome"] for f, c in got.items()} == {1: INCONCLUSIVE, 8: INCONCLUSIVE}, got
    assert check(all_failed)[1]["measured"]["lr"] is None  # no LR where qk-layernorm trains
    # without qk-layernorm every run fails at LRs 1e3 and 1e4: a sensitivity of 0 by construction
    # (loss_star = loss_0), which must not read as "qk-layernorm is the more sensitive"
    high = check(planted.planted_study(QK, lrs=[1e3, 1e4])[0], (1,))[1]
    assert high["subchecks"]["lower_sensitivity"]["outcome"] == INCONCLUSIVE and high["outcome"] == INCONCLUSIVE


# ---- finding 8: forecast.py ------------------------------------------------------------------

def test_degree_keeps_a_residual_degree_of_freedom():
    assert [degree_with_dof(n, 2) for n in (2, 3, 4, 5)] == [0, 1, 2, 2]
    assert degree_with_dof(5, 1) == 1


def test_backtest_fits_and_bands(qk_runs):
    four = forecast(qk_runs, study((8,)))
    assert four["fitted_sizes"] == sorted(four["sizes"])[:3] and four["persistence_params"] == four["sizes"][2]
    for e in four["backtest"]:
        assert e["degree"] == 1 and e["n_fitted_sizes"] == 3
        lo, hi = e["interval"]
        assert lo < e["predicted"] < hi and math.log10(hi / lo) > 0.01  # residuals -> a band
        # the drawn curve spans the fitted and held-out sizes, not the far forecast targets
        assert [e["curve"][0]["params"], e["curve"][-1]["params"]] == pytest.approx([four["sizes"][0], four["sizes"][-1]])
    five = forecast(planted.planted_study(QK, scales=FIVE_SIZES)[0], study((8,)))
    assert {e["degree"] for e in five["backtest"]} == {2}
    assert forecast(qk_runs, study((8,), forecast_degree=1))["backtest"][0]["degree"] == 1


def test_failed_before_probe():
    rows = pl.DataFrame({
        "diverged": [True, True, True, True, False, False],
        "diverged_step": [50, 60, 30, 40, None, None],
        "diverged_reason": ["loss above init_loss + 1.0 for 3 checks", "loss above init_loss + 1.0 for 3 checks",
                            "non-finite loss", "non-finite loss", None, None],
        "steps_completed": [50, 60, 30, 40, 20, 300],
        "probe_step": [30] * 6, "train.log_every": [10] * 6, "train.divergence_window": [3] * 6})
    # flagged at 50 after 3 logs above the margin: above it from step 30, the probe step
    assert rows.select(failed_before_probe(rows))["diverged"].to_list() == [True, False, True, False, True, False]


def test_calibrated_threshold_splits_the_fitted_sizes_only(qk_runs):
    fc = forecast(qk_runs, study((8,)))
    cal = fc["threshold_calibration"]
    assert fc["threshold_rule"] == "calibrated" and cal["n_misclassified"] == 0
    assert cal["max_logit_trained"] < fc["threshold"] < cal["min_logit_failed"]
    # the held-out size's logits never move the threshold
    w = held_out(qk_runs, 0.1)
    moved = qk_runs.with_columns(max_attn_logit_at_probe=pl.when(w).then(1.0).otherwise(pl.col("max_attn_logit_at_probe")))
    assert forecast(moved, study((8,)))["threshold"] == fc["threshold"]
    assert forecast(qk_runs, study((8,), forecast_threshold="fixed"))["threshold"] == 1e4
    # logits that cannot separate anything: no threshold
    assert calibrate_threshold(pl.DataFrame({"logit": [5.0, 5.0], "failed": [True, False]})) is None


# ---- finding 8: the check ----------------------------------------------------------------------

def test_f8_a_forecast_that_beats_persistence_is_reproduced(qk_runs):
    c = check(qk_runs, (8,))[8]
    assert c["outcome"] == REPRODUCED
    m = c["measured"]
    assert (m["n_scored"], m["n_correct"], m["persistence_n_correct"], m["n_informative"]) == (6, 6, 5, 1)
    assert m["max_log10_error"] <= f8.MAX_LOG10_ERROR
    json.dumps(c)


def test_f8_a_forecast_no_better_than_persistence_does_not_pass(qk_runs):
    # the held-out size fails at LR 0.03 (which no logit trend foresees) and trains at LR 0.1
    # (where the trend says it fails): forecast 4/6, persistence 5/6
    runs = set_outcome(set_outcome(qk_runs, 0.03, True), 0.1, False)
    c = check(runs, (8,))[8]
    assert (c["measured"]["n_correct"], c["measured"]["persistence_n_correct"]) == (4, 5)
    assert c["subchecks"]["beats_persistence"]["outcome"] == NOT_REPRODUCED and c["outcome"] == NOT_REPRODUCED
    # a tie: a fixed threshold of 3e3 also calls LR 0.03 divergent (predicted 3.4e3), which
    # trained: the forecast's win at LR 0.1 is cancelled by that miss (5/6 each)
    tie = check(qk_runs, (8,), forecast_threshold="fixed", logit_threshold=3e3)[8]
    assert (tie["measured"]["n_correct"], tie["measured"]["persistence_n_correct"]) == (5, 5)
    assert tie["subchecks"]["beats_persistence"]["outcome"] == NOT_REPRODUCED


def test_f8_when_persistence_is_right_everywhere_nothing_can_be_forecast(qk_runs):
    c = check(set_outcome(qk_runs, 0.1, False), (8,))[8]
    assert c["measured"]["n_informative"] == 0
    assert c["subchecks"]["beats_persistence"]["outcome"] == INCONCLUSIVE and c["outcome"] != REPRODUCED


def test_f8_a_run_that_failed_before_the_probe_is_not_a_forecast(qk_runs):
    w = held_out(qk_runs, 0.1)
    runs = qk_runs.with_columns(diverged_step=pl.when(w).then(20).otherwise(None), probe_step=pl.lit(30),
                                steps_completed=pl.when(w).then(20).otherwise(300))
    c = check(runs, (8,))[8]
    assert c["measured"]["n_failed_before_probe"] == 2 and c["measured"]["n_scored"] == 5
    assert c["subchecks"]["beats_persistence"]["outcome"] == INCONCLUSIVE and c["outcome"] == INCONCLUSIVE


def test_f8_a_logit_far_from_the_forecast_is_not_reproduced(qk_runs):
    # the held-out size's probe logit at LR 0.03 is 10x the planted one (outcome unchanged)
    w = held_out(qk_runs, 0.03)
    runs = qk_runs.with_columns(max_attn_logit_at_probe=pl.when(w).then(pl.col("max_attn_logit_at_probe") * 10)
                                .otherwise(pl.col("max_attn_logit_at_probe")))
    c = check(runs, (8,))[8]
    assert c["subchecks"]["logit_error"]["outcome"] == NOT_REPRODUCED and c["outcome"] == NOT_REPRODUCED
    assert c["subchecks"]["logit_error"]["max_log10_error"] > 1.0


def test_f8_needs_a_backtest_with_residual_freedom(qk_runs):
    c = check(qk_runs.filter(pl.col("scale") != "s3"), (8,))[8]
    assert c["outcome"] == INCONCLUSIVE and "3 fitted sizes" in c["note"]
    assert check(planted.planted_study({"reference": {}})[0], (8,))[8]["outcome"] == "not run"
