"""Soft-capping (Gemma 2, Gemma Team 2024; Levanter's defaults 50 and 30): a logit z becomes
c * tanh(z / c), so |z| < c while small logits pass almost unchanged (slope 1 at 0).

Rybakov et al. 2024 (arXiv 2410.16682) combine it with qk-layernorm and report a higher
stable LR than either alone.
"""
from __future__ import annotations

from . import OFF_OR_POSITIVE, Intervention, Key, off_or_positive, register


def softcap(z, cap: float):
    """cap * tanh(z / cap), computed in fp32 (returned in fp32: the softmax and the
    cross-entropy downstream read fp32 anyway)."""
    import torch
    return cap * torch.tanh(z.float() / cap)


@register
class AttentionSoftcap(Intervention):
    """Attention logits soft-capped before the softmax (Gemma 2: c = 50). The fused kernel has
    no soft-cap, so a layer with it runs the explicit masked softmax (model.explicit_attention);
    the probe logs the capped logits (what the softmax saw) and the raw ones."""
    name = "attn_softcap"
    keys = {"model.attn_softcap": Key(OFF_OR_POSITIVE, off_or_positive, type=float, default=0.0)}
    mitigates = ("attention_logit_growth",)
    test = "tests/test_softcap.py::test_attention_softcap_bounds_every_logit_the_softmax_sees"
    off = {"model.attn_softcap": 0.0}

    def attention_logits(self, c, attn, z):
        return softcap(z, c.attn_softcap)


@register
class FinalSoftcap(Intervention):
    """Output logits soft-capped before the cross-entropy and the z-loss (Gemma 2: c = 30);
    log Z and every output signal are computed from the capped logits."""
    name = "final_softcap"
    keys = {"model.final_softcap": Key(OFF_OR_POSITIVE, off_or_positive, type=float, default=0.0)}
    mitigates = ("output_logit_divergence",)
    test = "tests/test_softcap.py::test_final_softcap_bounds_every_output_logit"
    off = {"model.final_softcap": 0.0}

    def output_logits(self, c, logits):
        return softcap(logits, c.final_softcap)
