"""Faster drop-in versions of two hot spots of the training step (measured in
benchmarks/throughput.py, see docs/performance.md). Nothing imports this module by default:
each function computes the same values as the one it replaces, to float rounding.

* `apply_rope`     RoPE as one complex multiply per tensor instead of two strided slices,
                   four multiplies, a stack and their backward (model.apply_rope).
* `attention_forward`  an Attention.forward whose probe pass keeps the fused SDPA output
                   (so probe steps train exactly like plain steps) and computes the exact
                   fp32 max logit and the entropy beside it under no_grad, with autocast
                   disabled (under bf16 autocast model.py's `q.float() @ k.float()` runs in
                   bf16) and one special.entr pass (model.Attention.forward).

`patch(model)` binds both onto a built Transformer (for benchmarks and opt-in use).
"""
from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F

from .model import AttnProbe, rms


# ---- RoPE ----------------------------------------------------------------------------------

def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (B, H, T, Dh): (x1 + i x2) * (cos + i sin).

    Computed in fp32 (complex bf16 does not exist) and returned in x's dtype.
    """
    T = x.shape[-2]
    xf = x.float().unflatten(-1, (-1, 2))
    if xf.storage_offset() % 2 or any(s % 2 for s in xf.stride()[:-1]):
        xf = xf.contiguous()  # view_as_complex needs even strides
    rot = torch.view_as_complex(xf) * torch.complex(cos[:T].float(), sin[:T].float())
    return torch.view_as_real(rot).flatten(-2).to(x.dtype)


# ---- attention with a cheap exact probe --------------------------------------------------------

@torch.no_grad()
def probe_stats(q: torch.Tensor, k: torch.Tensor, scale: float) -> AttnProbe:
    """Exact fp32 attention logits of one layer -> max logit, mean entropy, q/k RMS."""
    T = q.shape[-2]
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = (q.float() @ k.float().transpose(-2, -1)).mul_(scale)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    logits.masked_fill_(~causal, float("-inf"))
    max_logit = logits.amax()
    entropy = torch.special.entr(logits.softmax(-1)).sum(-1).mean()
    return AttnProbe(max_logit=max_logit, entropy=entropy, q_rms=rms(q).mean(), k_rms=rms(k).mean())


def attention_forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, probe: bool = False):
    """model.Attention.forward with complex RoPE and the probe computed beside fused SDPA."""
    B, T, D = x.shape
    q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
    if self.qk_layernorm == "full":
        q, k = self.q_norm(q), self.k_norm(k)
    q, k, v = self._heads(q), self._heads(k), self._heads(v)
    if self.qk_layernorm == "per_head":
        q, k = self.q_norm(q), self.k_norm(k)
    if self.kappa > 0:
        q = math.sqrt(self.kappa) * q / rms(q).clamp_min(1e-12).to(q.dtype)
        k = math.sqrt(self.kappa) * k / rms(k).clamp_min(1e-12).to(k.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    stats = probe_stats(q.detach(), k.detach(), self.scale) if probe else None
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
    y = y.transpose(1, 2).reshape(B, T, D)
    return self.o_proj(y), stats


def patch(model: torch.nn.Module) -> torch.nn.Module:
    """Use attention_forward in every Attention module of a built Transformer (in place)."""
    from .model import Attention
    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = types.MethodType(attention_forward, m)
    return model
