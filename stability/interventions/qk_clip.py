"""QK-clip: the clipping half of MuonClip (Kimi K2, Kimi Team 2025, arXiv 2507.20534;
Megatron-LM `--qk-clip`, threshold 100, alpha 0.5).

Each training forward records every head's max attention logit S_h (the raw scale * q k^T
over causal entries, exact fp32, detached). After the optimizer step, a head with S_h > tau
has its query and key projection rows multiplied by gamma_h^alpha and gamma_h^(1-alpha),
gamma_h = tau / S_h, alpha = 1/2: that head's logits on the step's batch scale by gamma_h
(RoPE is linear), so its max returns to tau. As in MuonClip, S_h is read in the step's
forward, before the update; the logits after the update can exceed tau by what one update
adds. Exact only where q and k are linear in their projections: with qk-layernorm or the
kappa transplant on, the normalisation undoes the rescaling (and bounds the logits anyway).
"""
from __future__ import annotations

from . import OFF_OR_POSITIVE, Intervention, Key, off_or_positive, register

ALPHA = 0.5  # the query's share of the exponent (MuonClip's alpha for multi-head attention; Megatron's default)


@register
class QkClip(Intervention):
    """Rescale W_q and W_k of every head whose max attention logit exceeded tau, after each step."""
    name = "qk_clip"
    keys = {"model.qk_clip": Key(OFF_OR_POSITIVE + " (tau, the max attention logit kept)", off_or_positive,
                                 type=float, default=0.0)}
    mitigates = ("attention_logit_growth",)
    test = "tests/test_qk_clip.py::test_qk_clip_keeps_every_head_max_logit_at_most_tau_at_a_high_lr"
    off = {"model.qk_clip": 0.0}

    def attention_qk(self, c, attn, q, k):
        if attn.training:  # training forwards only: an evaluation batch must not set the clip
            from ..model import exact_logits
            attn.head_max_logit = exact_logits(q.detach(), k.detach(), attn.scale).amax(dim=(0, 2, 3))
        return q, k

    def after_step(self, c, model) -> None:
        import torch
        with torch.no_grad():
            for block in model.blocks:
                attn = block.attn
                s, attn.head_max_logit = getattr(attn, "head_max_logit", None), None
                if s is None:
                    continue
                gamma = c.qk_clip / s.clamp_min(c.qk_clip)  # min(1, tau / S_h) per head
                for proj, power in ((attn.q_proj, ALPHA), (attn.k_proj, 1 - ALPHA)):
                    # head h owns output rows h*head_dim .. (h+1)*head_dim - 1 (model.Attention._heads)
                    proj.weight.mul_((gamma ** power).repeat_interleave(attn.head_dim).unsqueeze(1).to(proj.weight.dtype))
