import copy

import pytest
import yaml

from stability.config import ConfigError
from stability.grid import expand, runs_by_id, set_args
from stability.config import load

SMOKE = yaml.safe_load(open("config/smoke.yaml"))


def test_smoke_grid_expands_and_shares_runs_between_studies():
    studies = expand(SMOKE)
    growth, logz = studies["attn_logit_growth"], studies["output_logit_divergence"]
    assert len(growth.points) == 3 * 2 * 2 and len(logz.points) == 1 * 2 * 2
    shared = set(growth.run_ids) & set(logz.run_ids)
    assert len(shared) == 2  # qk_ln at s0 for both LRs: the same config, so the same run
    assert len(runs_by_id(studies)) == 12 + 4 - 2


def test_grid_point_resolves_scale_variant_lr_and_defaults():
    st = expand(SMOKE)["attn_logit_growth"]
    p = next(p for p in st.points if p.scale == "s2" and p.variant == "no_qk_ln" and p.lr == 0.3)
    c = p.config
    assert (c.model.d_model, c.model.n_layers, c.model.head_dim) == (32, 1, 8)
    assert c.model.qk_layernorm == "none" and c.optim.lr == 0.3 and c.train.steps == 40


def test_set_args_rebuild_the_same_run():
    for p in expand(SMOKE)["attn_logit_growth"].points:
        assert load(overrides=set_args(p.config)).run_id() == p.run_id


def test_changing_one_lr_changes_only_those_run_ids():
    before = expand(SMOKE)
    cfg = copy.deepcopy(SMOKE)
    cfg["studies"]["output_logit_divergence"]["lrs"] = [1e-2, 2e-1]
    after = expand(cfg)
    assert after["attn_logit_growth"].run_ids == before["attn_logit_growth"].run_ids
    new = set(after["output_logit_divergence"].run_ids) - set(before["output_logit_divergence"].run_ids)
    assert len(new) == 2 and all(p.lr == 0.2 for p in after["output_logit_divergence"].points if p.run_id in new)


def test_code_version_changes_every_run_id():
    cfg = copy.deepcopy(SMOKE)
    cfg["code_version"] = 2
    assert not set(runs_by_id(expand(cfg))) & set(runs_by_id(expand(SMOKE)))


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["studies"]["attn_logit_growth"]["scales"].append("huge"), "unknown scale 'huge'"),
    (lambda c: c["studies"]["attn_logit_growth"].update(reference="nope"), "unknown variant 'nope'"),
    (lambda c: c["studies"]["attn_logit_growth"]["variants"].update(bad={"model.qk_layernorm": "x"}), "model.qk_layernorm"),
    (lambda c: c["scales"].update(s0={"d_model": 16, "n_layers": 1, "head_dim": 5}), "model.head_dim"),
    (lambda c: c["studies"]["attn_logit_growth"].update(lrs=[0.1, -1]), "lrs"),
])
def test_bad_studies_are_named(mutate, message):
    cfg = copy.deepcopy(SMOKE)
    mutate(cfg)
    with pytest.raises(ConfigError, match=message):
        expand(cfg)
