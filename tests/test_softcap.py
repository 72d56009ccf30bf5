"""Soft-capping (stability/interventions/softcap.py): attention and output logits stay within
the cap, the explicit attention path the attention cap needs stays causal, and every signal
stays exact with the caps on (issue 14)."""
import math

import pytest
import torch

from stability.config import load
from stability.model import Transformer, apply_rope, explicit_attention
from stability.monitor import output_stats

D, HD, T, V = 32, 8, 16, 50


def model(**kw):
    cfg = load(overrides={"model.d_model": D, "model.n_layers": 2, "model.head_dim": HD,
                          **{f"model.{k}": v for k, v in kw.items()}}).model
    torch.manual_seed(0)
    return Transformer(cfg, vocab_size=V, max_seq_len=T)


def blow_up(m, factor=30.0):
    """Huge weights: without a cap the logits would reach the hundreds or thousands."""
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(factor)


def raw_logits(m, x):
    """Block 0's scale * q k^T by hand, (B, H, T, T), causal entries only (others -inf)."""
    blk = m.blocks[0]
    h = blk.ln1(m.embed(x))
    q, k = blk.attn._heads(blk.attn.q_proj(h)), blk.attn._heads(blk.attn.k_proj(h))
    q, k = apply_rope(q, m.rope_cos, m.rope_sin), apply_rope(k, m.rope_cos, m.rope_sin)
    z = (q @ k.transpose(-2, -1)) / math.sqrt(HD)
    return z, q, k, blk.attn._heads(blk.attn.v_proj(h))


def test_attention_softcap_bounds_every_logit_the_softmax_sees():
    cap = 5.0
    m = model(qk_layernorm="none", attn_softcap=cap)
    blow_up(m)
    x = torch.randint(0, V, (2, T))
    z, q, k, v = raw_logits(m, x)
    seen = m.blocks[0].attn.logits(z)
    assert seen.abs().max().item() <= cap and z.abs().max().item() > 100 * cap
    # the layer's attention is the softmax of exactly these capped logits
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    want = seen.masked_fill(~causal, float("-inf")).softmax(-1) @ v
    assert torch.allclose(explicit_attention(q, k, v, 1 / math.sqrt(HD), m.blocks[0].attn.logits), want, atol=1e-6)
    _, probes = m(x, probe=True)
    assert all(p.max_logit.item() <= cap for p in probes)
    assert all(p.max_logit_raw.item() > 100 * cap for p in probes)


def test_probe_logs_the_capped_and_raw_max_logit_exactly():
    cap = 3.0
    m = model(qk_layernorm="none", attn_softcap=cap)
    blow_up(m, 3.0)
    x = torch.randint(0, V, (2, T))
    _, probes = m(x, probe=True)
    z, *_ = raw_logits(m, x)
    z = z.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    assert probes[0].max_logit_raw.item() == pytest.approx(z.max().item(), rel=1e-5)
    assert probes[0].max_logit.item() == pytest.approx(cap * math.tanh(z.max().item() / cap), rel=1e-5)


def test_without_a_cap_the_probe_has_no_raw_logit_and_attention_stays_fused(monkeypatch):
    import stability.model as M
    called = []
    monkeypatch.setattr(M, "explicit_attention", lambda *a: called.append(1))
    m = model()
    _, probes = m(torch.randint(0, V, (1, T)), probe=True)
    assert not called and all(p.max_logit_raw is None for p in probes)


def test_explicit_attention_matches_the_fused_kernel_when_the_cap_is_far():
    fused, capped = model(qk_layernorm="none"), model(qk_layernorm="none", attn_softcap=1e6)
    x = torch.randint(0, V, (2, T))
    assert torch.allclose(fused(x)[0], capped(x)[0], atol=1e-5)


def test_explicit_attention_is_causal():
    m = model(qk_layernorm="none", attn_softcap=2.0)
    x = torch.randint(0, V, (2, T))
    changed = x.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % V  # a different future from position 10 on
    a, b = m(x)[0], m(changed)[0]
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_final_softcap_bounds_every_output_logit():
    cap = 4.0
    m = model(final_softcap=cap)
    blow_up(m)
    x, y = torch.randint(0, V, (2, T)), torch.randint(0, V, (2, T))
    logits, _ = m(x)
    assert logits.abs().max().item() <= cap
    raw = m.head(m.ln_f(m.blocks[1](m.blocks[0](m.embed(x), m.rope_cos, m.rope_sin)[0], m.rope_cos, m.rope_sin)[0]))
    assert raw.abs().max().item() > 10 * cap
    # log Z, the z-loss and the mean logit are those of the capped logits
    st = output_stats(logits, y)
    logz = torch.logsumexp(cap * torch.tanh(raw / cap), -1)
    assert st["logz_mean"].item() == pytest.approx(logz.mean().item(), rel=1e-6)
    assert st["z_loss"].item() == pytest.approx(logz.pow(2).mean().item(), rel=1e-6)
    assert abs(st["logz_mean"].item()) <= cap + math.log(V)


@pytest.mark.parametrize("key", ["model.attn_softcap", "model.final_softcap"])
@pytest.mark.parametrize("value,shown", [("-1", "-1.0"), ("1e-300", "1e-300")])  # 1e-300 is 0 in float32: 0/0
def test_a_negative_or_vanishing_cap_is_refused_naming_the_key(key, value, shown, capsys, tmp_path):
    from stability.cli import main
    assert main(["train", "--out", str(tmp_path / "run"), "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {key}: expected 0 (off) or a positive number >= 1.2e-38, got {shown}"]
    assert not (tmp_path / "run").exists()
