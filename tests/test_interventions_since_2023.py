"""The interventions of issue 14 as registry entries: declared honestly (a defining test that
exists, documented keys), off by default so no existing run id moves, at most one
intervention replacing a whole block or the optimizer; and runs combining them resume
bit-identically."""
import ast
import math
from pathlib import Path

import polars as pl
import pytest

from helpers import crash_at, tiny
from stability import interventions
from stability.config import ConfigError, RunConfig, load
from stability.train import train

ROOT = Path(__file__).resolve().parents[1]
NEW = {"attn_softcap": "model.attn_softcap", "final_softcap": "model.final_softcap", "qk_clip": "model.qk_clip",
       "norm_order": "model.norm_order", "optimizer": "optim.algorithm"}


def _test_exists(node_id: str) -> bool:
    path, _, name = node_id.partition("::")
    tree = ast.parse((ROOT / path).read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body)


@pytest.mark.parametrize("name", NEW)
def test_each_new_intervention_is_registered_with_an_existing_defining_test(name):
    iv = interventions.REGISTRY[name]
    assert list(iv.keys) == [NEW[name]] and iv.changes
    assert _test_exists(iv.test), iv.test
    assert f"`{NEW[name]}`" in (ROOT / "docs" / "config.md").read_text()
    assert not iv.on_in(RunConfig()) and not iv.on_in({})  # off by default


def test_every_seam_has_a_description_and_the_new_ones_exist():
    assert {"attention_qk", "attention_logits", "block", "output_logits", "optimizer", "after_step"} <= set(interventions.SEAMS)
    assert all(isinstance(v, str) and v for v in interventions.SEAMS.values())


def test_new_keys_off_their_default_enter_the_config_and_at_it_do_not():
    assert "attn_softcap" not in vars(load().model)
    assert load(overrides={"model.attn_softcap": 0}).run_id() == load().run_id()
    assert load(overrides={"optim.algorithm": "adamw"}).run_id() == load().run_id()
    assert load(overrides={"model.attn_softcap": 50}).run_id() != load().run_id()


def test_two_interventions_replacing_the_block_are_refused(monkeypatch):
    class OtherLayout(interventions.Intervention):
        name = "other_layout"
        keys = {"model.d_model": interventions.Key()}

        def is_on(self, c):
            return True

        def block(self, c, blk, x, cos, sin, probe):
            return x, None

    monkeypatch.setitem(interventions.REGISTRY, "other_layout", OtherLayout())
    load()  # alone it is fine
    with pytest.raises(ConfigError, match=r"^model\.d_model: expected at most one intervention on that replaces the block"):
        load(overrides={"model.norm_order": "reordered"})


COMBOS = {
    "clip_caps_reordered": {"model.qk_layernorm": "none", "model.qk_clip": 5.0, "model.final_softcap": 10.0,
                            "model.norm_order": "reordered", "optim.lr": 0.1},
    "qkv_norm_attn_cap": {"model.qk_layernorm": "qkv", "model.attn_softcap": 2.0, "optim.algorithm": "stable_adamw"},
    "adam_atan2": {"optim.algorithm": "adam_atan2"},
}


@pytest.mark.parametrize("over", COMBOS.values(), ids=COMBOS.keys())
def test_runs_with_the_new_interventions_train_and_resume_bit_identically(tmp_path, over):
    cfg = tiny(tmp_path, **over)
    full = train(cfg, tmp_path / "full", quiet=True)
    assert math.isfinite(full["final_loss"]) and full["final_loss"] < full["init_loss"]
    with crash_at(45), pytest.raises(RuntimeError):
        train(cfg, tmp_path / "resumed", quiet=True)
    assert train(cfg, tmp_path / "resumed", quiet=True)["resumed_from_step"] == 40
    a = pl.read_parquet(tmp_path / "full" / "metrics.parquet").drop("tokens_per_s")
    assert a.equals(pl.read_parquet(tmp_path / "resumed" / "metrics.parquet").drop("tokens_per_s"))
    assert a.filter(pl.col("step") > 0)["update_rms"].is_finite().all()  # each optimizer's own update
