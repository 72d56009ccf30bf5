"""Findings 9 (kappa transplant), 10 (AdamW epsilon) and 11 (combined mitigations).

Planted studies (stability/analysis/planted.py) with effects put above the seed noise, below
it, or reversed; the zero-layer (bigram) model that finding 9 compares against; and the
a-priori rule that decides which removals of finding 11 can act within a run.
"""
from __future__ import annotations

import json

import polars as pl
import pytest
import torch
import yaml
from helpers import REPO, tiny

from stability import grid
from stability.analysis import planted
from stability.analysis.claims import claims
from stability.analysis.findings import f10_adam_epsilon, f11_combined
from stability.analysis.fits import fit_table
from stability.analysis.forecast import forecast
from stability.analysis.sensitivity import sensitivity_table, with_outcome
from stability.analysis.verdict import (INCONCLUSIVE, NOT_REPRODUCED, NOT_RUN, NOT_TESTABLE, PARTIAL, REPRODUCED)
from stability.config import ConfigError, ModelConfig, flatten, load
from stability.model import Transformer
from stability.train import train


def analyse(runs: pl.DataFrame, finding: int, reference: str = "reference") -> dict:
    info = {"name": "planted", "findings": [finding], "reference": reference, "options": {}}
    runs = with_outcome(runs)  # as the aggregation does: the tests edit the summary columns
    sens = sensitivity_table(runs)
    out = claims(info, runs, sens, fit_table(runs, sens, {}, "planted"), forecast(runs, info))
    json.dumps(out)  # every record is plain data
    return out[0]


def shift(runs: pl.DataFrame, variant: str, nats: float, where: pl.Expr | None = None) -> pl.DataFrame:
    """Add `nats` to the final loss of a variant's runs (optionally only where `where`)."""
    hit = pl.col("variant") == variant
    if where is not None:
        hit = hit & where
    return runs.with_columns(final_loss=pl.when(hit).then(pl.col("final_loss") + nats).otherwise(pl.col("final_loss")))


# ---- finding 9 ---------------------------------------------------------------------------

FREE = {"model.qk_layernorm": "none"}
KAPPA = {"free": FREE, "k100": {**FREE, "model.qk_kappa": 100.0}, "k1e4": {**FREE, "model.qk_kappa": 1e4},
         "zero": {**FREE, "model.n_layers": 0}}
LRS9 = [3e-3, 1e-2, 3e-2]  # the planted optimum 1e-2 inside


def kappa_study(noise_sd: float = 0.01, lrs=LRS9, variants=KAPPA) -> pl.DataFrame:
    return planted.planted_study(variants, scales={"s0": (64, 2)}, lrs=lrs, seeds=(0, 1, 2),
                                 noise_sd=noise_sd, noise_seed=3)[0]


def test_f9_planted_onset_and_bigram_reproduce():
    c = analyse(kappa_study(), 9, "free")
    assert c["outcome"] == REPRODUCED and c["n_seeds"] == 3
    assert {k: s["outcome"] for k, s in c["subchecks"].items()} == {"onset": REPRODUCED, "bigram": REPRODUCED}
    assert c["effect"]["hi"] < 0.05 and c["measured"]["zero_layer_variant"] == "zero"
    assert c["measured"]["smallest_kappa_costing_more_than_band"] == 1e4


def test_f9_an_early_onset_is_not_reproduced_and_said_so():
    c = analyse(shift(kappa_study(), "k100", 0.5), 9, "free")  # kappa 100 already costs half a nat
    assert c["subchecks"]["onset"]["outcome"] == NOT_REPRODUCED and c["outcome"] == NOT_REPRODUCED
    assert c["effect"]["lo"] > 0.05
    assert "earlier than the paper" in c["note"] and c["measured"]["smallest_kappa_costing_more_than_band"] == 100


def test_f9_a_cost_at_the_band_within_seed_noise_is_inconclusive():
    c = analyse(shift(kappa_study(noise_sd=0.05), "k100", 0.05), 9, "free")
    assert c["subchecks"]["onset"]["outcome"] == INCONCLUSIVE
    assert c["effect"]["lo"] < 0.05 < c["effect"]["hi"]


def test_f9_kappa_1e4_better_than_the_zero_layer_model_is_not_reproduced():
    c = analyse(shift(kappa_study(), "k1e4", -0.3), 9, "free")
    assert c["subchecks"]["bigram"]["outcome"] == NOT_REPRODUCED and c["outcome"] == NOT_REPRODUCED


def test_f9_bigram_comparison_needs_layers_that_beat_the_bigram():
    # A zero-layer model better than the free one (what 300 steps on the synthetic data can
    # give): exceeding it says nothing about the transplant.
    c = analyse(shift(kappa_study(), "zero", -0.5), 9, "free")
    bigram = c["subchecks"]["bigram"]
    assert bigram["outcome"] == INCONCLUSIVE and "does not beat the zero-layer" in bigram["note"]
    assert c["outcome"] == INCONCLUSIVE


def test_f9_without_a_zero_layer_model_is_partial():
    c = analyse(kappa_study(variants={k: v for k, v in KAPPA.items() if k != "zero"}), 9, "free")
    assert c["subchecks"]["bigram"]["outcome"] == NOT_RUN and c["outcome"] == PARTIAL


@pytest.mark.parametrize("lrs", [[1e-2], [1e-2, 3e-2, 1e-1]])
def test_f9_best_loss_at_the_grid_edge_never_decides(lrs):
    # one LR, or a grid whose lowest LR is every arm's best: each best loss is only a bound
    c = analyse(kappa_study(noise_sd=0.0, lrs=lrs), 9, "free")
    assert all(c["measured"]["best_lr_at_grid_edge"].values())
    assert c["outcome"] == INCONCLUSIVE
    early = analyse(shift(kappa_study(noise_sd=0.0, lrs=lrs), "k100", 0.5), 9, "free")
    assert early["subchecks"]["onset"]["outcome"] == INCONCLUSIVE  # the kappa arm's optimum may lie below the grid


# ---- the zero-layer model ----------------------------------------------------------------

def test_zero_layer_model_is_embedding_norm_head():
    m = Transformer(ModelConfig(d_model=32, n_layers=0, head_dim=16), vocab_size=50, max_seq_len=16)
    logits, probes = m(torch.randint(0, 50, (2, 16)), probe=True)
    assert logits.shape == (2, 16, 50) and probes == [] and len(m.blocks) == 0
    assert m.n_non_embedding_params() == 32  # the final LayerNorm's gain only
    # each position's logits depend on its own token alone: a bigram model
    x = torch.randint(0, 50, (1, 16))
    y = x.clone()
    y[0, :8] = (y[0, :8] + 1) % 50
    assert torch.equal(m(x)[0][0, 8:], m(y)[0][0, 8:])


def test_zero_layers_validate_and_train(tmp_path):
    with pytest.raises(ConfigError, match="n_layers"):
        load(overrides={"model.n_layers": -1})
    s = train(tiny(tmp_path, **{"model.n_layers": 0, "train.steps": 20}), tmp_path / "run", quiet=True)
    assert s["final_loss"] < s["init_loss"] and s["max_attn_logit"] is None and s["grad_rms_final"] is None


# ---- finding 10 --------------------------------------------------------------------------

def grad_rms_median_at_largest() -> float:
    """The planted reference's median block-0 grad RMS at the largest scale (the largest
    epsilon's anchor, as the default study's epsilon is anchored on s2's measured value)."""
    runs, _ = planted.planted_study({"reference": {}})
    return float(runs.filter(pl.col("scale") == "s3")["grad_rms_final"].median())


def eps_study(eps: float | None, eps_harm: float = 0.2, noise_sd: float = 0.01) -> pl.DataFrame:
    variants = {"reference": {}} if eps is None else {"reference": {}, "big_eps": {"optim.eps": eps}}
    return planted.planted_study(variants, eps_harm=eps_harm, noise_sd=noise_sd, noise_seed=5)[0]


def test_f10_planted_eps_near_grad_rms_reproduces():
    c = analyse(eps_study(grad_rms_median_at_largest()), 10)
    subs = {k: s["outcome"] for k, s in c["subchecks"].items()}
    assert subs == {"falls_with_size": REPRODUCED, "falls_with_lr": REPRODUCED, "eps_harm": REPRODUCED,
                    "update_collapse": NOT_TESTABLE}
    assert c["outcome"] == REPRODUCED and c["effect"]["lo"] > 0.02
    assert c["measured"]["eps_large_over_grad_rms"] == pytest.approx(1.0)
    assert c["subchecks"]["falls_with_size"]["interval"]["hi"] < 0


def test_f10_eps_harm_below_noise_is_inconclusive_and_opposite_not_reproduced():
    eps = grad_rms_median_at_largest()
    assert analyse(eps_study(eps, eps_harm=0.04, noise_sd=0.1), 10)["outcome"] == INCONCLUSIVE
    c = analyse(eps_study(eps, eps_harm=-0.2), 10)  # a large epsilon that helps
    assert c["subchecks"]["eps_harm"]["outcome"] == NOT_REPRODUCED and c["outcome"] == NOT_REPRODUCED


def test_f10_collapse_at_an_eps_far_above_grad_rms_is_only_a_mechanism_demo():
    # eps 25x the grad RMS: the update shrinks by arithmetic, and the loss test is not run
    c = analyse(eps_study(1e-4), 10)
    assert c["subchecks"]["update_collapse"]["outcome"] == NOT_TESTABLE
    assert c["subchecks"]["update_collapse"]["update_rms_ratio_median"] < 0.5
    assert c["subchecks"]["eps_harm"]["outcome"] == NOT_RUN and c["outcome"] == PARTIAL
    assert "mechanism demonstration" in c["note"]


def test_f10_missing_eps_arm_is_partial_not_reproduced():
    c = analyse(eps_study(None), 10)  # the attn_logit_growth case: trends only
    assert c["subchecks"]["falls_with_size"]["outcome"] == REPRODUCED
    assert c["subchecks"]["eps_harm"]["outcome"] == NOT_RUN and c["outcome"] == PARTIAL
    assert "update_collapse" not in c["subchecks"]


def test_f10_grad_rms_rising_with_size_is_not_reproduced():
    runs = eps_study(None).with_columns(grad_rms_final=1e-3 * pl.col("non_embedding_params") / planted.N0)
    c = analyse(runs, 10)
    assert c["subchecks"]["falls_with_size"]["outcome"] == NOT_REPRODUCED and c["outcome"] == NOT_REPRODUCED


def test_f10_one_scale_cannot_show_a_size_trend():
    c = analyse(eps_study(None).filter(pl.col("scale") == "s1"), 10)
    assert c["subchecks"]["falls_with_size"]["outcome"] == NOT_RUN and c["outcome"] != REPRODUCED


# ---- finding 11 --------------------------------------------------------------------------

MIT = {"reference": {}, "short_warmup": {"optim.warmup_steps": 5},
       "no_z_loss": {"loss.z_loss": 0.0, "optim.weight_decay": 0.0}}


def mitigation_study(effect: float = 1.0, noise_sd: float = 0.01, variants=MIT, **kw) -> pl.DataFrame:
    return planted.planted_study(variants, scales={"s0": (64, 2), "s1": (128, 2)}, seeds=(0, 1, 2),
                                 effect=effect, noise_sd=noise_sd, noise_seed=7, **kw)[0]


def test_f11_planted_flat_and_removal_above_noise_reproduce():
    c = analyse(mitigation_study(), 11)
    subs = {k: s["outcome"] for k, s in c["subchecks"].items()}
    assert subs["flat"] == REPRODUCED and subs["short_warmup"] == REPRODUCED
    assert c["outcome"] == REPRODUCED and c["effect"]["hi"] < 0.2 and c["n_seeds"] == 3


def test_f11_untestable_removal_is_reported_and_not_counted():
    # z-loss 1e-4 and decay 1e-4 over 300 steps cannot act: whatever that arm shows is not counted
    runs = mitigation_study()
    flat = pl.col("variant") == "no_z_loss"  # an arm flatter than the reference: "not reproduced" if it counted
    runs = runs.with_columns(final_loss=pl.when(flat).then(3.0 + 0.001 * pl.col("seed")).otherwise("final_loss"),
                             diverged=pl.when(flat).then(False).otherwise("diverged"))
    c = analyse(runs, 11)
    z = c["subchecks"]["no_z_loss"]
    assert z["outcome"] == NOT_TESTABLE and z["interval"]["hi"] < 0 and "not testable" in z["note"]
    assert z["z_loss_dose"] == pytest.approx(0.03) and z["decay_dose"] < 0.1
    assert c["outcome"] == REPRODUCED


def test_f11_removal_below_noise_is_inconclusive_and_opposite_not_reproduced():
    assert analyse(mitigation_study(effect=0.1, noise_sd=0.05), 11)["subchecks"]["short_warmup"]["outcome"] \
        == INCONCLUSIVE
    c = analyse(mitigation_study(effect=-1.0), 11)
    assert c["subchecks"]["short_warmup"]["outcome"] == NOT_REPRODUCED and c["outcome"] == NOT_REPRODUCED


def test_f11_a_steep_reference_is_not_flat():
    runs = shift(mitigation_study(), "reference", 0.6, (pl.col("lr") <= 3e-3) | (pl.col("lr") >= 0.1))
    c = analyse(runs, 11)
    assert c["subchecks"]["flat"]["outcome"] == NOT_REPRODUCED and c["outcome"] == NOT_REPRODUCED


def test_f11_grid_under_two_decades_or_missing_warmup_removal_is_partial():
    narrow = analyse(mitigation_study().filter(pl.col("lr").is_between(1e-2, 0.3)), 11)
    assert narrow["subchecks"]["flat"]["outcome"] == NOT_RUN and narrow["outcome"] == PARTIAL
    # no variant removes warm-up, which could act: missing; decay removal is untestable from the config
    c = analyse(mitigation_study(variants={"reference": {}, "no_z_loss": MIT["no_z_loss"]}), 11)
    assert c["subchecks"]["remove_warmup"]["outcome"] == NOT_RUN and c["outcome"] == PARTIAL
    assert c["subchecks"]["no_z_loss"]["outcome"] == NOT_TESTABLE


def test_f11_dose_rule_from_configs():
    base = flatten(load().to_dict())
    ref = {"train.steps": 300, "optim.warmup_steps": 30, "loss.z_loss": 1e-4, "optim.weight_decay": 1e-4,
           "optim.independent_weight_decay": True}

    def acts(r: dict, v: dict, lrs=(1e-2,)) -> bool:
        return f11_combined.can_act({**base, **r}.get, {**base, **r, **v}.get, list(lrs))[0]

    assert not acts(ref, {"loss.z_loss": 0.0})  # 1e-4 x 300 = 0.03
    assert not acts(ref, {"optim.weight_decay": 0.0})  # ~1.5% shrink
    assert acts(ref, {"optim.warmup_steps": 0}) and acts(ref, {"model.qk_layernorm": "none"})
    paper = {**ref, "train.steps": 100_000, "optim.warmup_steps": 5000}
    assert acts(paper, {"loss.z_loss": 0.0}) and acts(paper, {"optim.weight_decay": 0.0})
    # coupled decay 0.1 acts through the LR: at LR 1e-2 the exponent is ~0.16
    assert acts(ref, {"optim.independent_weight_decay": False, "optim.weight_decay": 0.1})
    assert not acts(ref, {"optim.independent_weight_decay": False, "optim.weight_decay": 0.1}, (1e-4,))


def test_default_combined_study_trains_only_removals_that_can_act():
    wf = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    st = grid.expand_study("combined", wf["studies"]["combined"], wf)
    cfgs = {p.variant: flatten(p.config.to_dict()) for p in st.points}
    ref = cfgs[st.reference]
    lrs = sorted({p.lr for p in st.points})
    for v, c in cfgs.items():
        if v != st.reference:
            assert f11_combined.can_act(ref.get, c.get, lrs)[0], v
    for name in ("z_loss", "weight_decay"):  # not trained: the check reports them from the reference config
        off = {**ref, **f11_combined.MITIGATIONS[name]["off"]}
        assert not f11_combined.can_act(ref.get, off.get, lrs)[0], name


def test_default_adam_epsilon_study_anchors_eps_on_the_largest_scale():
    wf = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    st = grid.expand_study("adam_epsilon", wf["studies"]["adam_epsilon"], wf)
    eps = {p.config.optim.eps for p in st.points}
    largest = max(st.points, key=lambda p: p.config.model.d_model * p.config.model.n_layers).scale
    measured = 3.4e-4  # block-0 grad RMS at s2, LR 3e-2, seed 0, default settings (a probe run)
    assert len(eps) == 2 and largest == "s2"
    assert f10_adam_epsilon.EPS_NEAR_LO <= max(eps) / measured <= f10_adam_epsilon.EPS_NEAR_HI
    assert min(eps) / measured <= f10_adam_epsilon.EPS_NEGLIGIBLE
