"""Findings 2 (output-logit divergence) and 4 (independent weight decay) on planted studies.

The planted physics (stability/analysis/planted.py) gives RMS log Z a step-0 value of 5.9 and
a growth that z-loss cuts to a quarter; the tests below overwrite single columns to plant
the cases each rule must tell apart.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from helpers import tiny

from stability.analysis import planted
from stability.analysis.findings import run_checks
from stability.analysis.findings.f02_output_logit_divergence import DRIFT_MIN
from stability.analysis.sensitivity import sensitivity_table, with_outcome
from stability.train import train

F2_VARIANTS = {"z_loss_no_wd": {"optim.weight_decay": 0.0},
               "no_z_loss_no_wd": {"loss.z_loss": 0.0, "optim.weight_decay": 0.0}}
F4_VARIANTS = {"independent": {},
               "coupled": {"optim.independent_weight_decay": False, "optim.weight_decay": 0.1}}
SEEDS = (0, 1, 2)


def check(runs: pl.DataFrame, finding: int, reference: str, **options) -> dict:
    study = {"name": "planted", "findings": [finding], "reference": reference, "options": options}
    runs = with_outcome(runs)  # as the aggregation does: the tests edit the summary columns
    (claim,) = run_checks(study, runs, sensitivity_table(runs), None, None)
    return claim


def f2_study() -> pl.DataFrame:
    """Both variants at one scale, 4 LRs, 3 seeds; every run trains (the planted physics would
    fail the runs without z-loss and decay at LR >= 0.1)."""
    runs = planted.planted_study(F2_VARIANTS, scales={"s0": (64, 2)}, lrs=[1e-2, 3e-2, 1e-1, 3e-1], seeds=SEEDS)[0]
    return runs.with_columns(diverged=pl.lit(False), final_loss=pl.coalesce("final_loss", pl.lit(3.1)))


def set_growth(runs: pl.DataFrame, variant: str, growth) -> pl.DataFrame:
    """Plant RMS log Z growth (nats) for one variant: a number, or {seed: number}."""
    g = pl.col("seed").replace_strict(growth, return_dtype=pl.Float64) if isinstance(growth, dict) else pl.lit(growth)
    return runs.with_columns(logz_rms_final=pl.when(pl.col("variant") == variant)
                             .then(pl.col("logz_rms_init") + g).otherwise(pl.col("logz_rms_final")))


# ---- finding 2 ---------------------------------------------------------------------------

def test_f2_drift_removed_by_z_loss_is_reproduced():
    runs = set_growth(set_growth(f2_study(), "no_z_loss_no_wd", {0: 3.7, 1: 3.9, 2: 3.8}),
                      "z_loss_no_wd", {0: 1.1, 1: 1.2, 2: 1.0})
    c = check(runs, 2, "z_loss_no_wd")
    assert c["outcome"] == "reproduced"
    assert c["subchecks"]["drift"]["outcome"] == c["subchecks"]["removal"]["outcome"] == "reproduced"
    assert (c["measured"]["variant_off"], c["measured"]["variant_on"]) == ("no_z_loss_no_wd", "z_loss_no_wd")
    assert c["effect"]["estimate"] == pytest.approx(3.8 - 1.1) and c["n_seeds"] == 3
    assert c["measured"]["lr_read"] == {"s0": 0.3}  # every run trains in this planted study
    # the paper's Fig. 4 quantity and the signed mean log Z are reported beside RMS log Z
    at = c["measured"]["at_lr_read_off"]["s0"]
    assert at["output_logit_mean_final"] is not None and at["logz_final"] is not None


def test_f2_drift_also_with_z_loss_is_not_reproduced():
    # both variants grow by ~3.8 nats: that is ordinary learning, not an instability z-loss removes
    runs = set_growth(set_growth(f2_study(), "no_z_loss_no_wd", {0: 3.7, 1: 3.9, 2: 3.8}),
                      "z_loss_no_wd", {0: 3.6, 1: 3.8, 2: 3.9})
    c = check(runs, 2, "z_loss_no_wd")
    assert c["subchecks"]["drift"]["outcome"] == "reproduced"
    assert c["subchecks"]["removal"]["outcome"] == "not reproduced"
    assert c["outcome"] == "not reproduced"


def test_f2_growth_below_the_drift_bar_is_not_reproduced():
    runs = set_growth(set_growth(f2_study(), "no_z_loss_no_wd", {0: 1.2, 1: 1.3, 2: 1.25}), "z_loss_no_wd", 0.1)
    c = check(runs, 2, "z_loss_no_wd")
    assert c["subchecks"]["drift"]["interval"]["hi"] < DRIFT_MIN
    assert c["outcome"] == "not reproduced"


def test_f2_one_seed_or_noisy_seeds_are_inconclusive():
    one = set_growth(set_growth(f2_study(), "no_z_loss_no_wd", 3.8), "z_loss_no_wd", 1.0).filter(pl.col("seed") == 0)
    assert check(one, 2, "z_loss_no_wd")["outcome"] == "inconclusive"  # one pair says nothing about its noise
    noisy = set_growth(set_growth(f2_study(), "no_z_loss_no_wd", {0: 0.5, 1: 6.5, 2: 3.0}),
                       "z_loss_no_wd", {0: 0.4, 1: 1.0, 2: 0.5})
    assert check(noisy, 2, "z_loss_no_wd")["subchecks"]["drift"]["outcome"] == "inconclusive"


def test_f2_never_reads_an_lr_where_a_variant_failed():
    runs = set_growth(set_growth(f2_study(), "no_z_loss_no_wd", 3.8), "z_loss_no_wd", 1.0)
    # at LR 0.3 the run without z-loss fails in one seed, with a huge log Z that must not be read
    bad = (pl.col("variant") == "no_z_loss_no_wd") & (pl.col("lr") == 0.3) & (pl.col("seed") == 1)
    runs = runs.with_columns(final_loss=pl.when(bad).then(None).otherwise(pl.col("final_loss")),
                             diverged=pl.when(bad).then(True).otherwise(pl.col("diverged")),
                             logz_rms_final=pl.when(bad).then(500.0).otherwise(pl.col("logz_rms_final")))
    c = check(runs, 2, "z_loss_no_wd")
    assert c["measured"]["lr_read"] == {"s0": 0.1}
    assert {p["lr"] for p in c["measured"]["pairs"]} == {0.1}
    assert max(p["drift_off"] for p in c["measured"]["pairs"]) < 10
    # the failed run is loss harm (capped at loss_0) at the highest LR where z-loss trained
    harm = c["subchecks"]["loss_harm"]
    assert harm["lr"] == {"s0": 0.3} and harm["pairs"][1]["loss_off"] == planted.INIT_LOSS
    # the default planted physics: without z-loss and decay every run at LR >= 0.1 fails
    c = check(planted.planted_study(F2_VARIANTS, seeds=SEEDS)[0], 2, "z_loss_no_wd")
    assert set(c["measured"]["lr_read"].values()) == {0.03} and c["outcome"] == "reproduced"


def test_f2_with_every_run_failed_is_never_reproduced():
    runs = f2_study().with_columns(final_loss=pl.lit(None, pl.Float64), diverged=pl.lit(True))
    c = check(runs, 2, "z_loss_no_wd")
    assert c["outcome"] == "inconclusive" and "trained" in c["note"]
    assert c["subchecks"]["loss_harm"]["outcome"] != "reproduced"


def test_f2_loss_harm_is_a_separate_verdict():
    runs = set_growth(set_growth(f2_study(), "no_z_loss_no_wd", {0: 3.7, 1: 3.9, 2: 3.8}), "z_loss_no_wd", 1.0)
    # final losses equal to within 0.001 nats: no harm, yet drift and removal still reproduce
    same = runs.with_columns(final_loss=3.0 + 0.001 * pl.col("seed"))
    c = check(same, 2, "z_loss_no_wd")
    assert c["outcome"] == "reproduced" and c["subchecks"]["loss_harm"]["outcome"] == "not reproduced"
    assert c["measured"]["separate_verdicts"] == {"loss_harm": "not reproduced"}
    worse = same.with_columns(final_loss=pl.when(pl.col("variant") == "no_z_loss_no_wd")
                              .then(pl.col("final_loss") + 0.3 + 0.01 * pl.col("seed")).otherwise(pl.col("final_loss")))
    assert check(worse, 2, "z_loss_no_wd")["subchecks"]["loss_harm"]["outcome"] == "reproduced"


def test_f2_prefers_the_one_factor_z_loss_variant():
    variants = {"z_loss_wd": {}, **F2_VARIANTS}
    runs = planted.planted_study(variants, scales={"s0": (64, 2)}, lrs=[1e-2, 3e-2], seeds=SEEDS)[0]
    c = check(runs, 2, "z_loss_wd")
    assert c["measured"]["variant_on"] == "z_loss_no_wd" and c["note"] == ""
    c = check(runs.filter(pl.col("variant") != "z_loss_no_wd"), 2, "z_loss_wd")
    assert c["measured"]["variant_on"] == "z_loss_wd" and "optim.weight_decay" in c["note"]


def test_run_summary_has_the_output_logit_mean(tmp_path):
    s = train(tiny(tmp_path, **{"train.steps": 50}), tmp_path / "run", quiet=True)
    # the window of every *_final key: the last 20% of the 50 steps, logged at steps 45 and 50
    rows = pl.read_parquet(tmp_path / "run" / "metrics.parquet").filter(pl.col("step") > 40)
    assert rows.height == 2
    assert s["output_logit_mean_final"] == pytest.approx(float(np.mean(rows["output_logit_mean"].to_numpy())))


# ---- finding 4 ---------------------------------------------------------------------------

def f4_study(effect: float, noise_sd: float = 0.0, seeds=SEEDS) -> pl.DataFrame:
    return planted.planted_study(F4_VARIANTS, scales={"s0": (64, 2), "s1": (128, 2)},
                                 lrs=[3e-3, 1e-2, 3e-2, 1e-1, 3e-1], seeds=seeds, effect=effect,
                                 noise_sd=noise_sd)[0]


def test_f4_independent_lower_well_above_noise_is_reproduced():
    c = check(f4_study(1.0, noise_sd=0.005), 4, "independent")
    assert c["outcome"] == "reproduced" and c["effect"]["lo"] > 0 and c["n_seeds"] == 3
    assert set(c["measured"]["per_scale_diff"]) == {"s0", "s1"}


def test_f4_effect_below_seed_noise_is_inconclusive():
    c = check(f4_study(0.02, noise_sd=0.2), 4, "independent")
    assert c["outcome"] == "inconclusive" and c["effect"]["lo"] < 0 < c["effect"]["hi"]


def test_f4_opposite_effect_is_not_reproduced():
    c = check(f4_study(-1.0, noise_sd=0.005), 4, "independent")
    assert c["outcome"] == "not reproduced" and c["effect"]["hi"] < 0


def test_f4_coupled_arm_takes_the_lower_of_two_windows():
    runs = f4_study(1.0)
    scored = with_outcome(runs)

    def sens(variant, scale, seed, lrs):  # Sec. 2.2 by hand: every planted run here trains
        lc = scored.filter((pl.col("variant") == variant) & (pl.col("scale") == scale) & (pl.col("seed") == seed)
                           & pl.col("lr").is_in(lrs))["loss_capped"]
        return float((lc - lc.min()).mean())

    top, low = [1e-2, 3e-2, 1e-1, 3e-1], [3e-3, 1e-2, 3e-2, 1e-1]
    c = check(runs, 4, "independent", lr_window=4)
    assert c["measured"]["lrs_independent"] == top and c["measured"]["lrs_coupled"] == [top, low]
    for p in c["measured"]["pairs"]:
        key = (p["scale"], p["seed"])
        assert p["independent"] == pytest.approx(sens("independent", *key, top))
        assert p["coupled"] == pytest.approx(min(sens("coupled", *key, top), sens("coupled", *key, low)))
    # planted optimum 1e-2 sits in the lower window, so the minimum is taken there
    assert c["effect"]["estimate"] < c["measured"]["same_window_effect"]["estimate"]
    plain = check(runs, 4, "independent")
    assert plain["measured"]["lrs_coupled"] == [[3e-3, 1e-2, 3e-2, 1e-1, 3e-1]] and "lr_window" in plain["note"]


def test_f4_degenerate_inputs_are_never_reproduced():
    runs = f4_study(1.0, noise_sd=0.005)
    one_lr = check(runs.filter(pl.col("lr") == 1e-2), 4, "independent")
    assert one_lr["outcome"] == "inconclusive"
    failed = runs.with_columns(final_loss=pl.lit(None, pl.Float64), diverged=pl.lit(True))
    assert check(failed, 4, "independent")["outcome"] == "inconclusive"
    one_seed = check(f4_study(1.0, seeds=(0,)).filter(pl.col("scale") == "s0"), 4, "independent")
    assert one_seed["outcome"] == "inconclusive"
    assert check(runs.filter(pl.col("variant") == "independent"), 4, "independent")["outcome"] == "not run"
