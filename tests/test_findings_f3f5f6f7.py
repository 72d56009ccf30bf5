"""Findings 3 (warm-up), 5 (width vs depth), 6 (muParam) and 7 (steps and batch size) on
planted studies (stability/analysis/planted.py) whose effects, noise and grids are known:
an effect well above the seed noise reproduces, the same effect under heavy noise is
inconclusive, the opposite (or absent) effect does not reproduce, and degenerate inputs
never reproduce.
"""
from __future__ import annotations

import math

import polars as pl
import pytest

from stability.analysis import planted
from stability.analysis.claims import claims
from stability.analysis.findings.paired_sens import NO_EFFECT_SENS
from stability.analysis.verdict import at_most
from stability.analysis.sensitivity import sensitivity_table, with_outcome
from stability.analysis.verdict import Interval

SEEDS = (0, 1, 2, 3)
WARMUP = {"reference": {}, "short_warmup": {"optim.warmup_steps": 5}}
LADDERS = {"w0": (64, 2), "w1": (128, 2), "d1": (64, 4), "d2": (64, 8)}  # both ladders span 4x params
WIDTHS = {"w0": (64, 2), "w1": (128, 2), "w2": (256, 2)}
MUP = {"reference": {}, "mup": {"model.parametrization": "mup_simple"}}
# warm-up stays >= the planted reference's 50 steps: shorter reads as the planted warm-up effect
KNOBS = {"reference": {}, "steps_600": {"train.steps": 600, "optim.warmup_steps": 100},
         "batch_64": {"train.batch_size": 64, "train.steps": 150, "optim.warmup_steps": 50}}
QUIET, LOUD = 0.001, 0.4  # per-run loss noise (nats): far below / far above the planted effects


def check(finding: int, runs: pl.DataFrame) -> dict:
    study = {"name": "planted", "findings": [finding], "reference": "reference", "options": {}}
    runs = with_outcome(runs)  # as the aggregation does: the tests edit the summary columns
    return claims(study, runs, sensitivity_table(runs), None, None)[0]


def study(variants, **kw) -> pl.DataFrame:
    return planted.planted_study(variants, **{"seeds": SEEDS, **kw})[0]


def all_failed(runs: pl.DataFrame) -> pl.DataFrame:
    return runs.with_columns(diverged=pl.lit(True), final_loss=pl.lit(None, pl.Float64))


def one_lr(runs: pl.DataFrame) -> pl.DataFrame:
    return runs.filter(pl.col("lr") == 1e-2)


def penalise(runs: pl.DataFrame, variant: str | None, nats_per_decade2: float) -> pl.DataFrame:
    """Make `variant` (None: every variant) more LR-sensitive: add c * (log10 lr + 2)^2 nats to
    its final losses."""
    extra = nats_per_decade2 * (pl.col("lr").log10() + 2) ** 2
    hit = pl.lit(True) if variant is None else pl.col("variant") == variant
    return runs.with_columns(final_loss=pl.when(hit).then(pl.col("final_loss") + extra)
                             .otherwise(pl.col("final_loss")))


# ---- shared helper -----------------------------------------------------------------------

def test_at_most_is_one_sided():
    assert at_most(Interval(0.0, -0.02, 0.02, 4), 0.05) == "reproduced"
    assert at_most(Interval(-1.0, -1.2, -0.8, 4), 0.05) == "reproduced"  # far below the bound is fine
    assert at_most(Interval(0.2, 0.1, 0.3, 4), 0.05) == "not reproduced"
    assert at_most(Interval(0.05, 0.0, 0.1, 4), 0.05) == "inconclusive"
    assert at_most(Interval(0.0, -math.inf, math.inf, 1), 0.05) == "inconclusive"


# ---- finding 3: warm-up ------------------------------------------------------------------

def test_f3_longer_warmup_above_noise_reproduces():
    c = check(3, study(WARMUP, effect=4.0, noise_sd=QUIET))
    assert c["outcome"] == "reproduced" and c["n_seeds"] == len(SEEDS)
    assert c["effect"]["lo"] > 0 and c["effect"]["n"] == len(SEEDS) * len(planted.DEFAULT_SCALES)
    assert set(c["measured"]["gain_per_scale"]) == set(planted.DEFAULT_SCALES)
    # the planted gain grows with scale (k x (1 + 0.5 (1 + x))): the qualifier is checked, not assumed
    assert c["subchecks"]["qualifier_larger_models"]["outcome"] == "reproduced"
    assert c["thresholds"]["no_effect_band"]["value"] == NO_EFFECT_SENS.value


def test_f3_effect_shrunk_below_noise_is_inconclusive():
    c = check(3, study(WARMUP, effect=0.5, noise_sd=LOUD))
    assert c["outcome"] == "inconclusive"
    assert c["effect"]["lo"] < 0 < c["effect"]["hi"]


def test_f3_opposite_or_absent_effect_is_not_reproduced():
    # -0.5: the short warm-up's k becomes k0 (1 - 0.25 (1 + x)), still > 0 at the largest scale
    assert check(3, study(WARMUP, effect=-0.5, noise_sd=QUIET))["outcome"] == "not reproduced"
    none = check(3, study(WARMUP, effect=0.0))  # interval [0, 0]: inside the no-effect band
    assert none["outcome"] == "not reproduced" and none["effect"]["estimate"] == pytest.approx(0.0, abs=1e-12)


def test_f3_qualifier_does_not_decide_the_outcome_and_is_never_silent():
    runs = study(WARMUP, effect=4.0, noise_sd=QUIET).filter(pl.col("scale") == "s2")
    c = check(3, runs)
    assert c["outcome"] == "reproduced"
    assert c["subchecks"]["qualifier_larger_models"]["outcome"] == "not run"
    assert "unchecked" in c["note"]


@pytest.mark.parametrize("degenerate", [one_lr, all_failed])
def test_f3_degenerate_grids_are_inconclusive(degenerate):
    runs = degenerate(study(WARMUP, effect=4.0))
    c = check(3, runs)
    # Seeds: what the study trained for the compared variants, even where no pair was usable
    assert c["outcome"] == "inconclusive" and c["n_seeds"] == runs["seed"].n_unique() > 1


# ---- finding 5: width vs depth -----------------------------------------------------------

def test_f5_depth_faster_above_noise_reproduces():
    c = check(5, study({"reference": {}}, scales=LADDERS, depth_effect=2.0, noise_sd=QUIET))
    m = c["measured"]
    assert c["outcome"] == "reproduced" and c["n_seeds"] == len(SEEDS)
    assert m["width_scales"] == ["w0", "w1"] and m["depth_scales"] == ["w0", "d1", "d2"]
    assert m["span_ratio"] == pytest.approx(1.0, abs=0.01)
    assert c["effect"]["lo"] > 0 and c["effect"]["n"] == len(SEEDS)


def test_f5_under_noise_is_inconclusive_and_opposite_is_not_reproduced():
    loud = check(5, study({"reference": {}}, scales=LADDERS, depth_effect=2.0, noise_sd=LOUD))
    assert loud["outcome"] == "inconclusive"
    assert check(5, study({"reference": {}}, scales=LADDERS, depth_effect=-1.0,
                          noise_sd=QUIET))["outcome"] == "not reproduced"


def test_f5_one_seed_has_no_interval():
    c = check(5, planted.planted_study({"reference": {}}, scales=LADDERS, seeds=(0,), depth_effect=2.0)[0])
    assert c["outcome"] == "inconclusive" and c["effect"]["lo"] is None and "one seed" in c["note"]


def test_f5_unmatched_or_missing_ladders_are_inconclusive():
    wide = check(5, study({"reference": {}}, scales={**LADDERS, "w2": (256, 2)}, depth_effect=2.0))
    assert wide["outcome"] == "inconclusive" and "not matched" in wide["note"]
    assert wide["measured"]["span_ratio"] == pytest.approx(2.0, abs=0.01)
    flat = check(5, study({"reference": {}}, scales=WIDTHS))  # no depth ladder: no trend to compare
    assert flat["outcome"] == "inconclusive" and "depth ladder" in flat["note"]
    assert check(5, one_lr(study({"reference": {}}, scales=LADDERS)))["outcome"] == "inconclusive"


# ---- finding 6: muParam ------------------------------------------------------------------

def test_f6_stable_optimum_reproduces_with_a_bracketed_standard_optimum():
    c = check(6, study(MUP, scales=WIDTHS, noise_sd=QUIET))
    sub = c["subchecks"]["optimum_stable_mup"]
    assert sub["outcome"] == "reproduced" and c["effect"]["lo"] > 0
    st = c["measured"]["stability_mup"]
    assert st["standard_at_grid_edge"] == [] and st["mup_at_grid_edge"] == []
    # planted lr* = 1e-2 (N/N0)^-0.5 for standard: 16x params over the ladder = 0.6 decades of drift
    assert st["per_seed"][0]["range_standard"] == pytest.approx(0.6, abs=0.1)
    assert c["subchecks"]["does_not_lower_sensitivity_mup"]["outcome"] == "reproduced"
    assert c["outcome"] == "reproduced" and c["n_seeds"] == len(SEEDS)


def test_f6_a_standard_optimum_clipped_by_the_grid_is_never_reproduced():
    # standard's optimum at w1/w2 (5e-3, 2.5e-3) lies below a grid starting at 1e-2
    c = check(6, study(MUP, scales=WIDTHS, lrs=[1e-2, 3e-2, 1e-1, 3e-1], noise_sd=QUIET))
    sub = c["subchecks"]["optimum_stable_mup"]
    assert sub["outcome"] == "inconclusive" and "grid edge" in sub["note"]
    assert c["measured"]["stability_mup"]["standard_at_grid_edge"]
    assert c["outcome"] != "reproduced"


def test_f6_drifting_mup_is_not_reproduced_and_one_seed_is_inconclusive():
    drift = check(6, study(MUP, scales=WIDTHS, mup_effect=0.0, noise_sd=QUIET))
    assert drift["subchecks"]["optimum_stable_mup"]["outcome"] == "not reproduced"
    assert drift["outcome"] == "not reproduced"
    one = check(6, planted.planted_study(MUP, scales=WIDTHS, seeds=(0,))[0])
    assert one["subchecks"]["optimum_stable_mup"]["outcome"] == "inconclusive" and one["outcome"] != "reproduced"


def test_f6_mup_that_lowers_sensitivity_fails_its_subcheck():
    runs = penalise(study(MUP, scales=WIDTHS, noise_sd=QUIET), "reference", 0.2)  # standard more sensitive
    c = check(6, runs)
    assert c["subchecks"]["does_not_lower_sensitivity_mup"]["outcome"] == "not reproduced"
    assert c["outcome"] == "not reproduced"


def test_f6_degenerate_grids_never_reproduce():
    assert check(6, one_lr(study(MUP, scales=WIDTHS)))["outcome"] == "inconclusive"
    assert check(6, all_failed(study(MUP, scales=WIDTHS)))["outcome"] != "reproduced"


# ---- finding 7: steps and batch size -----------------------------------------------------

def test_f7_unchanged_sensitivity_is_an_equivalence():
    c = check(7, study(KNOBS, noise_sd=QUIET))
    assert c["outcome"] == "reproduced" and set(c["subchecks"]) == {"unchanged_steps_600", "unchanged_batch_64"}
    band = NO_EFFECT_SENS.value
    assert all(-band <= s["interval"]["lo"] and s["interval"]["hi"] <= band for s in c["subchecks"].values())


def test_f7_a_change_within_a_factor_of_two_but_above_the_band_is_not_reproduced():
    runs = penalise(penalise(study(KNOBS, noise_sd=QUIET), None, 0.2), "steps_600", 0.1)
    c = check(7, runs)
    ref = c["measured"]["variants"]["steps_600"]["change_per_scale"]["s0"]["estimate"]
    sens = sensitivity_table(with_outcome(runs)).filter(pl.col("scale") == "s0")
    s = dict(zip(sens["variant"], sens["sensitivity_trainable"]))
    assert s["steps_600"] / s["reference"] < 2  # the old factor-of-2 window would have called it unchanged
    assert -ref > NO_EFFECT_SENS.value
    assert c["subchecks"]["unchanged_steps_600"]["outcome"] == "not reproduced"
    assert c["outcome"] == "not reproduced"


def test_f7_under_noise_is_inconclusive():
    assert check(7, study(KNOBS, noise_sd=LOUD))["outcome"] == "inconclusive"


@pytest.mark.parametrize("degenerate", [one_lr, all_failed])
def test_f7_degenerate_grids_are_inconclusive(degenerate):
    assert check(7, degenerate(study(KNOBS)))["outcome"] == "inconclusive"


def test_f7_without_knob_variants_is_not_run():
    assert check(7, study({"reference": {}}))["outcome"] == "not run"
