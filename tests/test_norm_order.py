"""OLMo 2's reordered norm (stability/interventions/norm_order.py) and qkv-layernorm
(model.qk_layernorm: qkv, stability/interventions/paper.py), issue 14."""
import torch

from stability import sizes
from stability.config import load
from stability.model import Transformer

V, T = 50, 16


def model(**kw):
    cfg = load(overrides={"model.d_model": 32, "model.n_layers": 2, "model.head_dim": 8,
                          **{f"model.{k}": v for k, v in kw.items()}}).model
    torch.manual_seed(0)
    return Transformer(cfg, V, T)


def unit_rows(x):
    """Each row has mean 0 and variance 1 (a LayerNorm's output with gain 1)."""
    return (torch.allclose(x.mean(-1), torch.zeros(()), atol=1e-5)
            and torch.allclose(x.var(-1, unbiased=False), torch.ones(()), atol=1e-3))


def test_reordered_block_adds_layernormed_sublayer_outputs():
    m = model(norm_order="reordered")
    blk = m.blocks[0]
    x = m.embed(torch.randint(0, V, (2, T))) * 5  # a residual stream that is not unit scale
    out, _ = blk(x, m.rope_cos, m.rope_sin)
    a, _ = blk.attn(x, m.rope_cos, m.rope_sin)  # attention reads x itself, no norm before it
    h = x + blk.ln1(a)
    assert torch.allclose(out, h + blk.ln2(blk.mlp(h)), atol=1e-6)
    # the two residual increments are LayerNorm outputs (gains 1 at init): unit rows
    assert unit_rows(h - x) and unit_rows(out - h)
    pre = model()  # the pre-LN block differs on the same weights
    pre.load_state_dict(m.state_dict())
    assert not torch.allclose(pre.blocks[0](x, m.rope_cos, m.rope_sin)[0], out)


def test_reordered_norm_keeps_the_parameter_count():
    assert sizes.n_params(model(norm_order="reordered").cfg, V) == sizes.n_params(model().cfg, V)


def test_qkv_layernorm_normalises_queries_keys_and_values_per_head():
    m = model(qk_layernorm="qkv")
    attn = m.blocks[0].attn
    with torch.no_grad():
        for p in (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight):
            p.mul_(40)  # large projections: only a normalisation brings them back to unit scale
    h = m.blocks[0].ln1(m.embed(torch.randint(0, V, (2, T))))
    q, k, v = attn._heads(attn.q_proj(h)), attn._heads(attn.k_proj(h)), attn._heads(attn.v_proj(h))
    for iv, c in attn.interventions:  # the qkv seam, as Attention.forward calls it
        q, k, v = iv.qkv(c, attn, q, k, v)
    assert unit_rows(q) and unit_rows(k) and unit_rows(v)  # each head's vector: mean 0, variance 1
    assert q.shape[-1] == k.shape[-1] == v.shape[-1] == 8
    # and they are what the attention uses: its logits are bounded by |q||k| * scale = head_dim / sqrt(head_dim)
    _, probes = m(torch.randint(0, V, (2, T)), probe=True)
    assert max(p.max_logit.item() for p in probes) <= 8 ** 0.5 + 1e-3


def test_qkv_layernorm_adds_three_gains_per_head_dim_per_block():
    m = model(qk_layernorm="qkv")
    built = sum(p.numel() for p in m.parameters())
    assert sizes.n_params(m.cfg, V) == built
    assert sizes.non_embedding_params(m.cfg) - sizes.non_embedding_params(model(qk_layernorm="none").cfg) == 2 * 3 * 8
