"""The intervention leaderboard: its numbers on a planted study with known answers, its
ranking, and the published claims' decisions."""
import math

import polars as pl
import pytest

from stability.analysis import leaderboard as L
from stability.analysis.verdict import INCONCLUSIVE, NOT_REPRODUCED, NOT_RUN, REPRODUCED

INIT = 5.0
LRS = [0.01, 0.1, 1.0]
SCALES = {"s0": 1e4, "s1": 1e5}


def planted(loss, extra_cols=None, seeds=(0, 1, 2)):
    """A runs table: loss(variant, scale, lr, seed) -> final loss (None: the run diverged)."""
    rows = []
    for variant, cfg in (extra_cols or {"stable": {"model.qk_layernorm": "per_head"},
                                         "fragile": {"model.qk_layernorm": "none"}}).items():
        for scale, params in SCALES.items():
            for lr in LRS:
                for seed in seeds:
                    final = loss(variant, scale, lr, seed)
                    rows.append({"variant": variant, "scale": scale, "lr": lr, "seed": seed,
                                 "run_id": f"{variant}-{scale}-{lr}-{seed}", "init_loss": INIT,
                                 "final_loss": INIT + 1 if final is None else final, "diverged": final is None,
                                 "non_embedding_params": params, "max_attn_logit": 10.0, **cfg})
    return pl.DataFrame(rows)


def test_the_table_measures_sensitivity_stable_lr_and_best_loss_per_seed():
    # stable: loss 3 at every LR; fragile: 3 at LR 0.01 and 0.1 except at s1 where 0.1 fails
    # for seed 0 only, and LR 1 always fails.
    def loss(v, s, lr, seed):
        if v == "stable":
            return 3.0 + 0.01 * seed
        if lr == 1.0 or (s == "s1" and lr == 0.1 and seed == 0):
            return None
        return 3.0
    t = L.leaderboard_table(planted(loss))
    row = lambda v, s: t.filter((pl.col("variant") == v) & (pl.col("scale") == s)).row(0, named=True)
    st, f0, f1 = row("stable", "s1"), row("fragile", "s0"), row("fragile", "s1")
    assert st["sensitivity"] == pytest.approx(0.0) and st["max_stable_lr"] == 1.0 and st["n_seeds"] == 3
    assert st["best_loss"] == pytest.approx(3.01)  # mean over seeds of 3.00, 3.01, 3.02
    # a failed LR counts at init: (5 - 3) / 3 LRs at s0; seed 0 at s1 has two failed LRs
    assert f0["sensitivity"] == pytest.approx(2 / 3)
    assert f1["sensitivity"] == pytest.approx((4 / 3 + 2 / 3 + 2 / 3) / 3)
    assert f0["max_stable_lr"] == 0.1 and f1["max_stable_lr"] == 0.01 and f1["max_stable_lr_any"] == 0.1
    # the trend: per seed, s0 -> s1 over one decade; seed 0's largest trained LR fell a decade
    assert f1["log10_max_stable_lr_slope"] == pytest.approx(-1 / 3)
    assert f1["sensitivity_slope"] == pytest.approx((4 / 3 - 2 / 3) / 3)
    # ranked at the largest scale, lower sensitivity first; each number traceable to its runs
    assert t.filter(pl.col("rank") == 1)["variant"].unique().to_list() == ["stable"]
    assert sorted(f1["run_ids"]) == sorted(f"fragile-s1-{lr}-{s}" for lr in LRS for s in (0, 1, 2))
    assert "qk_layernorm(per_head)" in st["interventions"] and "qk_layernorm" not in f1["interventions"]


def test_an_empty_study_gives_an_empty_table_and_claims_not_run():
    assert L.leaderboard_table(pl.DataFrame()).is_empty()
    assert {c["outcome"] for c in L.check_claims(pl.DataFrame())} == {NOT_RUN}


def test_claims_without_their_variants_are_not_run():
    claims = L.check_claims(planted(lambda v, s, lr, seed: 3.0))
    assert [c["id"] for c in claims] == [c.id for c in L.CLAIMS]
    assert all(c["outcome"] == NOT_RUN and c["note"].startswith("needs") for c in claims)


def test_qk_clip_claim_reads_the_logit_bound_only_where_the_clip_had_work_to_do():
    # without the clip the logit passes tau only at LR 1 (where it still trains); with it the
    # logit sits at 1.05 tau there and below tau elsewhere; losses equal.
    rows = []
    for variant, clip in (("clip", 100.0), ("free", 0.0)):
        for lr in LRS:
            for seed in (0, 1, 2):
                free_logit = 1e4 if lr == 1.0 else 20.0
                logit = min(free_logit, 105.0 + seed) if clip else free_logit
                rows.append({"variant": variant, "scale": "s0", "lr": lr, "seed": seed, "run_id": f"{variant}{lr}{seed}",
                             "init_loss": INIT, "final_loss": 3.0 + 0.1 * lr, "diverged": False,
                             "non_embedding_params": 1e4, "max_attn_logit": logit, "model.qk_clip": clip or None,
                             "model.qk_layernorm": "none"})
    claim = {c["id"]: c for c in L.check_claims(pl.DataFrame(rows))}["qk_clip_bounds_logits"]
    bound = claim["subchecks"]["max_logit_at_tau"]
    assert bound["lrs"] == [1.0] and bound["interval"]["n"] == 3
    assert bound["interval"]["estimate"] == pytest.approx(0.06)  # (105, 106, 107) / 100 - 1
    assert bound["outcome"] == REPRODUCED  # within CLIP_TOLERANCE = 0.1, seed noise tiny
    assert claim["subchecks"]["no_loss_penalty"]["outcome"] == REPRODUCED and claim["outcome"] == REPRODUCED


def test_softcap_claim_compares_paired_seed_sensitivities_against_the_band():
    def loss(v, s, lr, seed):
        if v == "softcap" and lr == 1.0:
            return None  # fails where qk-layernorm trains: +2/3 nats of sensitivity
        return 3.0 + 0.001 * seed
    variants = {"softcap": {"model.qk_layernorm": "none", "model.attn_softcap": 50.0},
                "qk_ln": {"model.qk_layernorm": "per_head", "model.attn_softcap": None}}
    claim = {c["id"]: c for c in L.check_claims(planted(loss, variants))}["softcap_vs_qk_norm"]
    assert claim["variants"] == ["softcap", "qk_ln"] and claim["scale"] == "s1"
    assert claim["subchecks"]["sensitivity_gap"]["interval"]["estimate"] == pytest.approx(2 / 3, abs=1e-3)
    assert claim["outcome"] == NOT_REPRODUCED
