import pytest
import torch

from stability.config import ModelConfig, OptimConfig
from stability.model import Transformer
from stability.optim import build_optimizer, schedule, set_lr


def _model(d=32, **kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig(d_model=d, n_layers=1, head_dim=8, **kw), vocab_size=20, max_seq_len=8)


def test_schedule_warmup_then_cosine_to_absolute_min():
    cfg = OptimConfig(lr=0.1, min_lr=1e-5, warmup_steps=10)
    assert schedule(5, cfg, 100) == pytest.approx(0.5)
    assert schedule(10, cfg, 100) == pytest.approx(1.0)
    assert schedule(100, cfg, 100) * cfg.lr == pytest.approx(1e-5)
    assert schedule(55, cfg, 100) == pytest.approx((1e-4 + 1) / 2, rel=1e-6)


def _decay_factor(lr: float, independent: bool, steps: int = 20) -> float:
    m = _model()
    cfg = OptimConfig(lr=lr, weight_decay=1e-2, independent_weight_decay=independent, warmup_steps=5, min_lr=lr / 10)
    opt = build_optimizer(m, cfg)
    w = m.blocks[0].mlp.fc1.weight
    before = w.detach().clone()
    for step in range(1, steps + 1):
        set_lr(opt, schedule(step, cfg, steps))
        for p in m.parameters():
            p.grad = torch.zeros_like(p)  # zero gradient: the Adam update is exactly 0, only decay acts
        opt.step()
    return (w.detach() / before).mean().item()


def test_independent_decay_is_the_same_whatever_the_peak_lr():
    small, large = _decay_factor(1e-3, True), _decay_factor(1e-1, True)
    assert small == pytest.approx(large, rel=1e-6)
    assert small < 1 - 1e-3  # it does decay


def test_coupled_decay_depends_on_the_peak_lr():
    small, large = _decay_factor(1e-3, False), _decay_factor(1e-1, False)
    assert (1 - large) > 50 * (1 - small)


def test_mup_simple_scales_hidden_matrix_lrs_by_base_over_fan_in():
    m = _model(d=64, parametrization="mup_simple", mup_base_width=16)
    opt = build_optimizer(m, OptimConfig(lr=0.01))
    lr_of = {id(p): g["peak_lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(m.blocks[0].mlp.fc1.weight)] == pytest.approx(0.01 * 16 / 64)
    assert lr_of[id(m.blocks[0].mlp.fc2.weight)] == pytest.approx(0.01 * (4 * 16) / (4 * 64))
    assert lr_of[id(m.blocks[0].attn.k_proj.weight)] == pytest.approx(0.01 * 16 / 64)
    assert lr_of[id(m.embed.weight)] == pytest.approx(0.01)
    assert lr_of[id(m.head.weight)] == pytest.approx(0.01)


def test_standard_parametrization_keeps_one_lr_and_norms_do_not_decay():
    m = _model()
    opt = build_optimizer(m, OptimConfig(lr=0.01, weight_decay=1e-4))
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert {g["peak_lr"] for g in opt.param_groups} == {0.01}
    assert wd_of[id(m.blocks[0].ln1.weight)] == 0.0
    assert wd_of[id(m.head.weight)] == pytest.approx(1e-4 / 0.01)
