"""`optim.algorithm` (stability/optimizers.py, stability/interventions/algorithms.py):
Adam-atan2 has no epsilon, StableAdamW clips a tensor's update when its gradient outruns
the second moment, and the 'update RMS' signal is each optimizer's own update (issue 14)."""
import math

import pytest
import torch

from stability.config import ConfigError, load
from stability.model import Transformer
from stability.optim import adam_update, build_optimizer, set_lr
from stability.optimizers import AdamAtan2, StableAdamW


def setup(algorithm: str, **optim):
    cfg = load(overrides={"model.d_model": 16, "model.n_layers": 1, "model.head_dim": 8,
                          "optim.algorithm": algorithm, "optim.warmup_steps": 0,
                          **{f"optim.{k}": v for k, v in optim.items()}})
    torch.manual_seed(0)
    m = Transformer(cfg.model, 20, 8)
    return m, build_optimizer(m, cfg.optim)


def steps(m, opt, grads, n=3):
    """n optimizer steps with the gradients grads[i] (one tensor per parameter), the same each time."""
    for _ in range(n):
        for p, g in zip(m.parameters(), grads):
            p.grad = g.clone()
        opt.step()


def test_adam_atan2_update_is_invariant_to_eps_and_finite_for_zero_gradients():
    m1, o1 = setup("adam_atan2", eps=1e-8)
    m2, o2 = setup("adam_atan2", eps=1e-2)
    assert isinstance(o1, AdamAtan2)
    grads = [torch.randn_like(p) * 1e-3 for p in m1.parameters()]
    steps(m1, o1, grads)
    steps(m2, o2, grads)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))  # eps is not read at all
    # zero gradients (m = v = 0): atan2(0, 0) = 0, a finite zero update, not 0/0
    m3, o3 = setup("adam_atan2", weight_decay=0.0)
    before = [p.detach().clone() for p in m3.parameters()]
    steps(m3, o3, [torch.zeros_like(p) for p in m3.parameters()])
    for p, b in zip(m3.parameters(), before):
        u = adam_update(o3, p, o3.param_groups[0])
        assert torch.isfinite(u).all() and (u == 0).all() and torch.equal(p.detach(), b)


def test_adam_atan2_update_does_not_collapse_when_gradients_are_tiny_but_adamw_does():
    """Finding 10's epsilon collapse: AdamW's update shrinks once the gradient RMS nears eps;
    atan2 is scale-invariant, so gradients 1e-12 times smaller give the same update."""
    updates = {}
    for algo in ("adam_atan2", "adamw"):
        for scale in (1.0, 1e-12):
            m, opt = setup(algo, weight_decay=0.0)
            torch.manual_seed(1)
            steps(m, opt, [torch.randn_like(p) * 1e-2 * scale for p in m.parameters()])
            w = m.blocks[0].mlp.fc1.weight
            updates[algo, scale] = adam_update(opt, w, opt.param_groups[0]).pow(2).mean().sqrt().item()
    assert updates["adam_atan2", 1e-12] == pytest.approx(updates["adam_atan2", 1.0], rel=1e-5)
    assert updates["adamw", 1e-12] < 1e-3 * updates["adamw", 1.0]


def test_stable_adamw_clips_an_update_whose_rms_ratio_exceeds_1():
    p = torch.nn.Parameter(torch.zeros(64))
    lr, betas, eps = 0.1, (0.9, 0.95), 1e-8
    stable = StableAdamW([p], lr=lr, betas=betas, eps=eps)
    q = torch.nn.Parameter(torch.zeros(64))
    plain = torch.optim.AdamW([q], lr=lr, betas=betas, eps=eps, weight_decay=0.0)
    torch.manual_seed(0)
    small = torch.randn(64) * 1e-2
    for _ in range(5):  # steady gradients: g^2 / v_hat stays near 1, no clipping, AdamW exactly
        p.grad, q.grad = small.clone(), small.clone()
        stable.step()
        plain.step()
    assert torch.allclose(p, q, atol=1e-6)
    assert stable.state[p]["clip"].item() == pytest.approx(1.0)
    spike = small * 100  # a gradient spike the second moment has not seen: RMS(g^2 / v_hat) >> 1
    before = p.detach().clone()
    p.grad = spike.clone()
    stable.step()
    st = stable.state[p]
    m_hat = st["exp_avg"] / (1 - 0.9 ** 6)
    v_hat = st["exp_avg_sq"] / (1 - 0.95 ** 6)
    ratio = math.sqrt((spike ** 2 / v_hat.clamp_min(eps ** 2)).mean().item())
    assert ratio > 1 and st["clip"].item() == pytest.approx(ratio, rel=1e-5)
    adam_step = lr * m_hat / (v_hat.sqrt() + eps)
    assert torch.allclose(before - p.detach(), adam_step / ratio, rtol=1e-5, atol=1e-9)  # the LR divided by RMS


@pytest.mark.parametrize("algorithm", ["adamw", "adam_atan2", "stable_adamw"])
def test_update_rms_signal_is_the_step_divided_by_the_lr(algorithm):
    m, opt = setup(algorithm, weight_decay=0.0, lr=0.05)
    set_lr(opt, 1.0)
    torch.manual_seed(2)
    steps(m, opt, [torch.randn_like(p) for p in m.parameters()], n=2)
    w = m.blocks[0].attn.k_proj.weight
    before = w.detach().clone()
    w.grad = torch.randn_like(w) * 10  # a spike, so StableAdamW clips
    for p in m.parameters():
        if p is not w:
            p.grad = None
    opt.step()
    group = next(g for g in opt.param_groups if any(p is w for p in g["params"]))
    assert torch.allclose((before - w.detach()) / group["lr"], adam_update(opt, w, group), rtol=1e-4, atol=1e-7)


def test_an_unknown_algorithm_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^optim\.algorithm: expected one of 'adamw', 'adam_atan2', 'stable_adamw'"):
        load(overrides={"optim.algorithm": "sgd"})
