"""Tests for `../stability/sizes.py`: counts from the config equal the built model's, and the
model and the scheduler requests (`resources.py`) both read them."""
from __future__ import annotations

import pytest

from stability import resources, sizes
from stability.config import ModelConfig, load
from stability.model import Transformer

VOCAB, SEQ = 50, 16
CONFIGS = {
    "default": {},
    "zero_layers": {"n_layers": 0},
    "no_qk_ln": {"qk_layernorm": "none"},
    "full_qk_ln": {"qk_layernorm": "full"},
    "mup_full": {"parametrization": "mup_full", "mup_base_width": 16},
    "mup_intermediate": {"parametrization": "mup_intermediate"},
    "kappa": {"qk_kappa": 4.0, "qk_layernorm": "none"},
    "wide_deep": {"d_model": 48, "n_layers": 3, "head_dim": 16, "mlp_ratio": 2},
}


@pytest.mark.parametrize("over", CONFIGS.values(), ids=CONFIGS.keys())
def test_config_only_counts_equal_the_built_model(over):
    cfg = ModelConfig(**over)
    m = Transformer(cfg, VOCAB, SEQ)
    built = sum(p.numel() for p in m.parameters())
    lookup, head = m.embed.weight.numel(), m.head.weight.numel()
    assert sizes.n_params(cfg, VOCAB) == m.n_params() == built
    assert sizes.non_embedding_params(cfg) == m.n_non_embedding_params() == built - lookup - head
    matmul = built - lookup  # every parameter but the embedding lookup is multiplied
    attention = cfg.n_layers * SEQ * cfg.d_model
    assert sizes.flops_per_token(cfg, VOCAB, SEQ) == m.flops_per_token(SEQ) == 6 * matmul + 6 * attention
    assert sizes.flops_per_token(cfg, VOCAB, SEQ, "palm") == 6 * matmul + 12 * attention


def test_resources_count_sizes_through_stability_sizes(monkeypatch):
    cfg = load()
    mem, minutes = resources.mem_mb(cfg), resources.runtime_min(cfg, 1, gpu=False)
    extra = 10**8  # parameters a new intervention might add
    n_params, fpt = sizes.n_params, sizes.flops_per_token
    monkeypatch.setattr(sizes, "n_params", lambda mc, v: n_params(mc, v) + extra)
    monkeypatch.setattr(sizes, "flops_per_token", lambda mc, v, t, conv="project": fpt(mc, v, t, conv) + 6 * extra)
    # weights, grads and two Adam moments in fp32, with mem_mb's 1.5x margin
    assert resources.mem_mb(cfg) - mem == pytest.approx(16 * extra / 2**20 * 1.5, abs=1)
    assert resources.runtime_min(cfg, 1, gpu=False) > minutes
