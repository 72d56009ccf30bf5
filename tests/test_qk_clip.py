"""QK-clip (stability/interventions/qk_clip.py): after a step, every head whose max attention
logit exceeded tau has it back at tau (exactly, on the batch it was measured on), and a run
whose logits grow without qk-layernorm keeps them near tau (issue 14)."""
import math

import polars as pl
import pytest
import torch

from helpers import tiny
from stability import interventions
from stability.config import load
from stability.model import Transformer
from stability.train import train

V, T = 50, 16


def head_maxes(m, x):
    """Every layer's per-head max attention logit on batch x, as a training forward records
    it for the clip: (n_layers, n_heads)."""
    m.train()
    with torch.no_grad():
        m(x)
    return torch.stack([blk.attn.head_max_logit for blk in m.blocks])


def clipped_model(d_model: int, head_dim: int, tau: float, seed: int, scale: float, rows: slice = slice(None)):
    """A one-layer QK-clip model (config, model) whose query and key weight `rows` are scaled
    by `scale`, so those heads' logits start far over tau."""
    cfg = load(overrides={"model.d_model": d_model, "model.n_layers": 1, "model.head_dim": head_dim,
                          "model.qk_layernorm": "none", "model.qk_clip": tau}).model
    torch.manual_seed(seed)
    m = Transformer(cfg, V, T)
    with torch.no_grad():
        m.blocks[0].attn.q_proj.weight[rows].mul_(scale)
        m.blocks[0].attn.k_proj.weight[rows].mul_(scale)
    return cfg, m


def test_the_clip_returns_each_head_over_tau_to_tau_exactly():
    tau = 20.0
    cfg, m = clipped_model(32, 8, tau, seed=0, scale=15, rows=slice(0, 16))  # heads 0, 1 over tau; 2, 3 under
    x = torch.randint(0, V, (2, T))
    before = head_maxes(m, x)[0]
    assert (before[:2] > 3 * tau).all() and (before[2:] < tau).all()
    q_under = m.blocks[0].attn.q_proj.weight[16:].clone()
    interventions.REGISTRY["qk_clip"].after_step(cfg, m)  # what train_step calls after optimizer.step()
    after = head_maxes(m, x)[0]
    assert torch.allclose(after, before.clamp(max=tau), rtol=1e-5)
    assert torch.equal(m.blocks[0].attn.q_proj.weight[16:], q_under)  # heads under tau untouched


def test_the_clip_splits_the_factor_evenly_between_query_and_key():
    tau = 5.0
    cfg, m = clipped_model(16, 16, tau, seed=1, scale=20)
    x = torch.randint(0, V, (1, T))
    s = head_maxes(m, x)[0, 0].item()
    wq, wk = m.blocks[0].attn.q_proj.weight.clone(), m.blocks[0].attn.k_proj.weight.clone()
    interventions.REGISTRY["qk_clip"].after_step(cfg, m)
    assert torch.allclose(m.blocks[0].attn.q_proj.weight, wq * math.sqrt(tau / s), rtol=1e-6)
    assert torch.allclose(m.blocks[0].attn.k_proj.weight, wk * math.sqrt(tau / s), rtol=1e-6)


def test_qk_clip_keeps_every_head_max_logit_at_most_tau_at_a_high_lr(tmp_path):
    """Without qk-layernorm at LR 0.1 the max logit grows past 70x tau; with QK-clip every
    logged max (every head, every step) stays within one update's growth of tau, and at tau
    once the LR has decayed. The clip reads the step's forward (as MuonClip and Megatron-LM
    do), so an update can carry a head past tau until the next step's clip."""
    tau = 10.0
    over = {"model.qk_layernorm": "none", "optim.lr": 0.1, "optim.warmup_steps": 20, "train.steps": 150,
            "train.eval_every": 150, "train.checkpoint_every": 150, "train.stop_on_divergence": False}
    maxes = {}
    for clip, every in ((0.0, 10), (tau, 1)):  # the clipped run logs (and probes) every step
        train(tiny(tmp_path, **over, **{"model.qk_clip": clip, "train.log_every": every}), tmp_path / f"c{clip}", quiet=True)
        m = pl.read_parquet(tmp_path / f"c{clip}" / "metrics.parquet").filter(pl.col("step") > 0)
        maxes[clip] = m["max_attn_logit"].to_list()
    assert max(maxes[0.0]) > 20 * tau
    assert max(maxes[tau]) <= 1.75 * tau  # measured 1.56 tau, near the peak LR
    assert all(v <= 1.02 * tau for v in maxes[tau][-10:])  # the LR has decayed: at tau (measured <= 1.01)


def test_the_clip_does_not_follow_evaluation_batches():
    cfg = load(overrides={"model.d_model": 32, "model.n_layers": 1, "model.head_dim": 8,
                          "model.qk_layernorm": "none", "model.qk_clip": 1.0}).model
    m = Transformer(cfg, V, T)
    m.eval()
    with torch.no_grad():
        m(torch.randint(0, V, (1, T)))
    assert getattr(m.blocks[0].attn, "head_max_logit", None) is None


def test_a_negative_tau_is_refused_naming_the_key():
    from stability.config import ConfigError
    with pytest.raises(ConfigError, match=r"^model\.qk_clip: expected 0 \(off\) or a positive number >= 1\.2e-38"):
        load(overrides={"model.qk_clip": -1})
