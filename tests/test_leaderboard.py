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
