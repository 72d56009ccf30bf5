import math

import pytest
import torch

from stability.config import ModelConfig
from stability.model import Transformer, apply_rope, rope_tables


def model(**kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{"d_model": 32, "n_layers": 2, "head_dim": 8, **kw}), vocab_size=50, max_seq_len=16)


def test_no_biases_untied_head_and_paper_init():
    m = model()
    assert not any(n.endswith("bias") for n, _ in m.named_parameters())
    assert m.embed.weight.data_ptr() != m.head.weight.data_ptr()
    w = m.blocks[0].mlp.fc1.weight
    std = 1 / math.sqrt(w.shape[1])
    assert w.abs().max() <= 2 * std + 1e-6  # truncated at two standard deviations
    assert abs(m.embed.weight.std().item() - 1 / math.sqrt(32)) < 0.02


def test_probe_pass_matches_fused_attention():
    m = model()
    x = torch.randint(0, 50, (2, 16))
    fused, _ = m(x)
    explicit, probes = m(x, probe=True)
    assert torch.allclose(fused, explicit, atol=1e-5)
    assert len(probes) == 2 and all(torch.isfinite(p.max_logit) for p in probes)


def test_probe_max_logit_is_exact():
    m = model(qk_layernorm="none")
    x = torch.randint(0, 50, (1, 16))
    _, probes = m(x, probe=True)
    # recompute block 0's logits by hand
    blk = m.blocks[0]
    h = blk.ln1(m.embed(x))
    q = blk.attn._heads(blk.attn.q_proj(h)); k = blk.attn._heads(blk.attn.k_proj(h))
    q, k = apply_rope(q, m.rope_cos, m.rope_sin), apply_rope(k, m.rope_cos, m.rope_sin)
    z = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    z = z.masked_fill(~torch.ones(16, 16, dtype=torch.bool).tril(), -float("inf"))
    assert probes[0].max_logit.item() == pytest.approx(z.max().item(), rel=1e-5)


def test_rope_preserves_norm_and_is_relative():
    cos, sin = rope_tables(8, 4, 10000.0)
    x = torch.randn(1, 1, 8, 4)
    assert torch.allclose(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_kappa_transplant_bounds_logits():
    m = model(qk_layernorm="none", qk_kappa=50.0)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(30)  # huge weights would blow up logits without the transplant
    _, probes = m(torch.randint(0, 50, (2, 16)), probe=True)
    assert all(p.max_logit.item() <= 50.0 + 1e-3 for p in probes)
    assert max(p.max_logit.item() for p in probes) > 10.0  # and they are pinned near kappa, not collapsed


@pytest.mark.parametrize("norm", ["per_head", "full"])
def test_qk_layernorm_bounds_logits_under_large_weights(norm):
    m_norm, m_none = model(qk_layernorm=norm), model(qk_layernorm="none")
    x = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        for m in (m_norm, m_none):
            for blk in m.blocks:
                blk.attn.q_proj.weight.mul_(100); blk.attn.k_proj.weight.mul_(100)
    _, p_norm = m_norm(x, probe=True)
    _, p_none = m_none(x, probe=True)
    # Normalised q, k (gains 1 at init) bound the logits: per head |q_h|^2 = d_head, so
    # z <= sqrt(d_head); over the whole vector |q_h|^2 <= d_model, so z <= d_model / sqrt(d_head).
    bound = math.sqrt(8) if norm == "per_head" else 32 / math.sqrt(8)
    assert max(p.max_logit.item() for p in p_norm) <= bound + 1e-3
    assert max(p.max_logit.item() for p in p_none) > 1000


def test_mup_full_zero_queries_and_small_head():
    m = model(parametrization="mup_full", mup_base_width=16)
    assert all(b.attn.q_proj.weight.abs().sum() == 0 for b in m.blocks)
    assert m.head.weight.std().item() < 1 / math.sqrt(32)
    assert m.blocks[0].attn.scale == pytest.approx(1 / 8)


def test_non_embedding_params_exclude_embedding_and_head():
    m = model()
    assert m.n_params() - m.n_non_embedding_params() == 2 * 50 * 32
