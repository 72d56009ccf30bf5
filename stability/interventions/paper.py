"""The interventions of Wortsman et al. 2023, in the order their seams run.

Warm-up and AdamW's epsilon are optimizer hyperparameters (stability.optim), not switches.
"""
from __future__ import annotations

import math

from . import Intervention, Key, register


@register
class QkLayerNorm(Intervention):
    """qk-layernorm (Sec. 3.1.2, after Dehghani et al. 2023): LayerNorm on queries and keys
    before the dot product, per head (the paper's) or over the whole d_model vector; `qkv`
    also normalises the values, each of q, k and v per head, LayerNorm right after the
    projection (Rybakov et al. 2024, arXiv 2410.16682)."""
    name = "qk_layernorm"
    keys = {"model.qk_layernorm": Key()}
    mitigates = ("attention_logit_growth",)
    test = "tests/test_train.py::test_qk_layernorm_bounds_the_max_logit_at_lr_0_3"
    off = {"model.qk_layernorm": "none"}

    def is_on(self, c) -> bool:
        return c.qk_layernorm != "none"

    def attention_modules(self, c, attn) -> None:
        from torch import nn
        width = attn.n_heads * attn.head_dim if c.qk_layernorm == "full" else attn.head_dim
        attn.q_norm = nn.LayerNorm(width, eps=c.layernorm_eps, bias=False)
        attn.k_norm = nn.LayerNorm(width, eps=c.layernorm_eps, bias=False)
        if c.qk_layernorm == "qkv":
            attn.v_norm = nn.LayerNorm(width, eps=c.layernorm_eps, bias=False)

    def qkv(self, c, attn, q, k, v):
        if c.qk_layernorm == "per_head":
            return attn.q_norm(q), attn.k_norm(k), v
        if c.qk_layernorm == "qkv":
            return attn.q_norm(q), attn.k_norm(k), attn.v_norm(v)
        # over the whole vector: back to (B, T, d) (a view of the projection's output), norm, heads again
        B, H, T, Dh = q.shape
        whole = lambda x, norm: norm(x.transpose(1, 2).reshape(B, T, H * Dh)).view(B, T, H, Dh).transpose(1, 2)
        return whole(q, attn.q_norm), whole(k, attn.k_norm), v

    def block_params(self, c) -> int:
        gains = {"per_head": 2 * c.head_dim, "full": 2 * c.d_model, "qkv": 3 * c.head_dim}  # of q, k (and v)
        return gains[c.qk_layernorm]


@register
class QkKappa(Intervention):
    """Finding 9's logit-threshold transplant (Sec. 3.1.2 / Fig. 7): q and k pass through
    g(z) = sqrt(kappa) z / rms(z) and the logits are scaled by 1/d_head, so by Cauchy-Schwarz
    |logit| <= kappa exactly: kappa pins the max attention logit."""
    name = "qk_kappa"
    keys = {"model.qk_kappa": Key("0 (off) or a positive number", lambda v: v >= 0)}
    mitigates = ("attention_logit_growth",)
    test = "tests/test_model.py::test_kappa_transplant_bounds_logits"
    off = {"model.qk_kappa": 0.0}

    def qkv(self, c, attn, q, k, v):
        from ..model import rms
        root = math.sqrt(c.qk_kappa)
        return root * q / rms(q).clamp_min(1e-12).to(q.dtype), root * k / rms(k).clamp_min(1e-12).to(k.dtype), v

    def attention_scale(self, c, head_dim: int) -> float:
        return 1.0 / head_dim


@register
class MuParam(Intervention):
    """muParam (Sec. 3.3, after Yang et al. 2022): hidden matrices' LR scaled by
    base_width / width; "intermediate" and "full" use 1/d_head attention; "full" also
    initialises the head with std sqrt(base_width)/width and the queries at zero."""
    name = "muparam"
    keys = {"model.parametrization": Key(),
            "model.mup_base_width": Key("a positive integer", lambda v: v > 0)}
    test = "tests/test_optim.py::test_mup_simple_scales_hidden_matrix_lrs_by_base_over_fan_in"
    off = {"model.parametrization": "standard"}

    def is_on(self, c) -> bool:
        return c.parametrization != "standard"

    def attention_scale(self, c, head_dim: int) -> float | None:
        return 1.0 / head_dim if c.parametrization in ("mup_intermediate", "mup_full") else None

    def init(self, c, model) -> None:
        if c.parametrization != "mup_full":
            return
        from torch import nn
        std = math.sqrt(c.mup_base_width) / c.d_model
        nn.init.trunc_normal_(model.head.weight, std=std, a=-2 * std, b=2 * std)
        for block in model.blocks:
            nn.init.zeros_(block.attn.q_proj.weight)

    def lr_multipliers(self, c, model) -> dict[str, float]:
        from ..model import hidden_matrices
        # fan_in of fc2 is 4d and its base fan_in 4*base, so every hidden matrix shares the ratio.
        return dict.fromkeys(hidden_matrices(model), c.mup_base_width / c.d_model)


@register
class WeightDecay(Intervention):
    """Weight decay, independent of the LR by default (Sec. 3.2.2, after Loshchilov & Hutter
    2019): the per-step decay is s_t * lambda, not lr_t * lambda. Torch multiplies its
    weight_decay by lr_t = peak * s_t, so independent decay sets weight_decay = lambda / peak."""
    name = "weight_decay"
    keys = {"optim.weight_decay": Key("a number >= 0", lambda v: v >= 0),
            "optim.independent_weight_decay": Key()}
    mitigates = ("output_logit_divergence",)
    test = "tests/test_optim.py::test_independent_decay_is_the_same_whatever_the_peak_lr"
    off = {"optim.weight_decay": 0.0}

    def is_on(self, c) -> bool:
        return c.weight_decay > 0

    def weight_decay(self, c, peak_lr: float, decays: bool) -> float:
        if not decays:
            return 0.0
        return c.weight_decay / peak_lr if c.independent_weight_decay else c.weight_decay


@register
class ZLoss(Intervention):
    """z-loss (Sec. 3.2.1, after Chowdhery et al. 2022): adds coefficient x mean (log Z)^2
    to the loss, pulling log Z towards 0 so output logits cannot drift."""
    name = "z_loss"
    keys = {"loss.z_loss": Key("a number >= 0", lambda v: v >= 0)}
    mitigates = ("output_logit_divergence",)
    test = "tests/test_train.py::test_z_loss_pulls_log_z_to_zero"
    off = {"loss.z_loss": 0.0}

    def is_on(self, c) -> bool:
        return c.z_loss > 0

    def objective(self, c, loss, stats: dict):
        from ..monitor import Z_LOSS
        return loss + c.z_loss * stats[Z_LOSS]
