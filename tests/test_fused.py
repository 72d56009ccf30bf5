"""Fused sweeps (stability/fused.py) against the same runs trained alone (CPU, fp32).

On CPU every member is bit-identical to its run trained alone by `stability.train.train`:
the forward under vmap is exact, LayerNorm gains get the native backward per member
(fused._MemberLayerNorm), and the stacked AdamW reproduces torch's fused kernel op for op
(with a correctly rounded sqrt). The tests check the issue's contract (identical divergence
flags and steps, metrics within 1e-5 relative, tokens_per_s and wall times excluded) and
report the largest relative difference seen, which is 0 on the development machine.
"""
import json

import polars as pl
import pytest
import torch

from helpers import RTOL, crash_at, max_rel_diff, same_summary, tiny
from stability.config import ConfigError
from stability.fused import StackedAdamW, train_fused
from stability.fusion import check_fusable, should_fuse
from stability.model import Transformer
from stability.optim import build_optimizer, schedule, set_lr
from stability.train import train

def test_each_member_equals_its_run_trained_alone(tmp_path, record_property):
    """3 peak LRs x 2 seeds, 100 steps, qk-layernorm off; LR 3 diverges (at step 15)."""
    over = {"train.steps": 100, "model.qk_layernorm": "none", "train.checkpoint_every": 40}
    cfgs = [tiny(tmp_path, **over, **{"optim.lr": lr, "seed": seed}) for lr in (1e-2, 3e-2, 3.0) for seed in (0, 1)]
    fused = train_fused(cfgs, [tmp_path / "fused" / c.run_id() for c in cfgs], quiet=True)
    worst: dict[str, float] = {}
    diverged = []
    for cfg, f in zip(cfgs, fused):
        alone = train(cfg, tmp_path / "alone" / cfg.run_id(), quiet=True)
        assert (f["diverged"], f["diverged_step"], f["steps_completed"]) == \
            (alone["diverged"], alone["diverged_step"], alone["steps_completed"])
        same_summary(f, alone)
        a = pl.read_parquet(tmp_path / "fused" / cfg.run_id() / "metrics.parquet")
        b = pl.read_parquet(tmp_path / "alone" / cfg.run_id() / "metrics.parquet")
        for col, r in max_rel_diff(a, b).items():
            worst[col] = max(worst.get(col, 0.0), r)
        assert (tmp_path / "fused" / cfg.run_id() / "config.yaml").read_text() == \
            (tmp_path / "alone" / cfg.run_id() / "config.yaml").read_text()
        assert not list((tmp_path / "fused" / cfg.run_id() / "ckpt").glob("*.pt"))  # finished: no checkpoints
        diverged.append(f["diverged"])
    assert diverged == [False, False, False, False, True, True]
    record_property("max_rel_diff", json.dumps(worst))
    print("largest relative difference per column:", worst)
    assert max(worst.values()) <= RTOL, worst


def test_a_killed_sweep_resumes_per_member_to_the_same_result(tmp_path):
    """Checkpoints are per member in train's format: after a crash one member resumes alone
    (stability.train.train) and the other in a sweep; both end as runs trained alone."""
    cfgs = [tiny(tmp_path, **{"optim.lr": 1e-2, "seed": s}) for s in (0, 1)]
    outs = [tmp_path / "fused" / c.run_id() for c in cfgs]
    with crash_at(45), pytest.raises(RuntimeError):
        train_fused(cfgs, outs, quiet=True)
    for out in outs:
        assert sorted(p.name for p in (out / "ckpt").glob("*.pt")) == ["step-00000020.pt", "step-00000040.pt"]
        assert not (out / "summary.json").exists()
    alone0 = train(cfgs[0], outs[0], quiet=True)  # a fused checkpoint resumed by train
    assert alone0["resumed_from_step"] == 40
    s = train_fused(cfgs, outs, quiet=True)  # member 0 finished: left as it is; member 1 resumes
    assert s[0] == alone0 and s[1]["resumed_from_step"] == 40
    for cfg, out in zip(cfgs, outs):
        ref = tmp_path / "ref" / cfg.run_id()
        train(cfg, ref, quiet=True)
        a = pl.read_parquet(out / "metrics.parquet").drop("tokens_per_s")
        b = pl.read_parquet(ref / "metrics.parquet").drop("tokens_per_s")
        assert a.equals(b)


def test_stacked_adamw_equals_torch_fused_adamw(tmp_path):
    """Per member and param group (LR, weight decay, eps differ), bit for bit, 5 steps."""
    cfgs = [tiny(tmp_path, **{"optim.lr": 1e-2}), tiny(tmp_path, **{"optim.lr": 3.0, "optim.eps": 1e-6}),
            tiny(tmp_path, **{"optim.lr": 0.1, "optim.weight_decay": 0.0, "optim.decay_on": "all"})]
    models, opts = [], []
    for c in cfgs:
        torch.manual_seed(0)
        models.append(Transformer(c.model, 256, c.train.seq_len))
        opts.append(build_optimizer(models[-1], c.optim))
    P = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models])
    EA, EAS = torch.zeros_like(P), torch.zeros_like(P)
    group_index = torch.zeros(P.shape, dtype=torch.int64)
    for j, (m, o) in enumerate(zip(models, opts)):
        gi = {id(p): g for g, group in enumerate(o.param_groups) for p in group["params"]}
        group_index[j] = torch.cat([torch.full((p.numel(),), gi[id(p)]) for p in m.parameters()])
    adam = StackedAdamW(group_index)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 6):
        G = torch.randn(P.shape, generator=gen) * 10.0 ** torch.randint(-6, 0, (len(cfgs), 1), generator=gen)
        for j, (m, o, c) in enumerate(zip(models, opts, cfgs)):
            set_lr(o, schedule(step, c.optim, c.train.steps))
            for p, g in zip(m.parameters(), torch.split(G[j], [p.numel() for p in m.parameters()])):
                p.grad = g.view(p.shape).clone()
            o.step()
        adam.step(P, G, EA, EAS, opts, step)
        for j, m in enumerate(models):
            assert torch.equal(P[j], torch.cat([p.detach().reshape(-1) for p in m.parameters()])), (step, j)
            assert torch.equal(EAS[j], torch.cat([opts[j].state[p]["exp_avg_sq"].reshape(-1) for p in m.parameters()]))


def test_members_must_share_the_model_and_data(tmp_path):
    a = tiny(tmp_path)
    check_fusable([a, tiny(tmp_path, **{"optim.lr": 0.1, "seed": 3, "optim.eps": 1e-6, "loss.z_loss": 0.0})])
    with pytest.raises(ConfigError, match="model.d_model"):
        check_fusable([a, tiny(tmp_path, **{"model.d_model": 64})])
    with pytest.raises(ConfigError, match="train.batch_size"):
        check_fusable([a, tiny(tmp_path, **{"train.batch_size": 4})])
    with pytest.raises(ConfigError, match="more than once"):
        check_fusable([a, tiny(tmp_path)])


def test_fusing_is_chosen_only_where_measured_to_pay():
    measured = {"machine": {"device_kind": "NVIDIA H200"},
                "cases": [{"d_model": 64, "ratio": 9.0}, {"d_model": 256, "ratio": 3.0}]}
    assert not should_fuse("cpu")  # no measurement: do not fuse
    assert not should_fuse("cpu", measured)  # measured on another device kind
    assert should_fuse("NVIDIA H200", measured) and should_fuse("NVIDIA H200", measured, d_model=48)
    slow = {"machine": {"device_kind": "cpu"}, "cases": [{"d_model": 32, "ratio": 0.9}, {"d_model": 256, "ratio": 1.5}]}
    assert not should_fuse("cpu", slow) and should_fuse("cpu", slow, d_model=256)


@pytest.mark.parametrize("over", [{"optim.algorithm": "adam_atan2"}, {"model.qk_clip": 100.0}])
def test_interventions_that_replace_the_optimizer_step_are_refused(tmp_path, over):
    cfgs = [tiny(tmp_path, **{**over, "optim.lr": lr}) for lr in (1e-2, 3e-2)]
    with pytest.raises(ConfigError, match="not supported in a fused sweep"):
        check_fusable(cfgs)


def test_the_early_warning_decides_per_member_as_alone(tmp_path):
    """`train.early_warning: stop` in a fused sweep: each member decides from its own rows, as its
    run alone does; the doomed member leaves the stack at its decision step, the other trains on."""
    over = {"train.steps": 100, "model.qk_layernorm": "none", "train.early_warning": "stop",
            "train.divergence_window": 100}  # the detector lets LR 1 run on: only the warning stops it
    cfgs = [tiny(tmp_path, **over, **{"optim.lr": lr}) for lr in (1e-2, 1.0)]
    fused = train_fused(cfgs, [tmp_path / "fused" / c.run_id() for c in cfgs], quiet=True)
    for cfg, f in zip(cfgs, fused):
        alone = train(cfg, tmp_path / "alone" / cfg.run_id(), quiet=True)
        same_summary(f, alone)
        a = pl.read_parquet(tmp_path / "fused" / cfg.run_id() / "metrics.parquet")
        b = pl.read_parquet(tmp_path / "alone" / cfg.run_id() / "metrics.parquet")
        assert a["warning_mode"].to_list() == b["warning_mode"].to_list()
        assert max(max_rel_diff(a.drop("warning_mode"), b.drop("warning_mode")).values()) <= RTOL
    assert [f["stopped_by_warning"] for f in fused] == [False, True]
    assert fused[1]["steps_completed"] == fused[1]["warning_step"] < 100
