"""A decoder-only Transformer as in Wortsman et al. 2023, readable top to bottom.

Pre-LayerNorm, no biases, RoPE, untied embedding and head, GELU MLP of width 4d.
Interventions (qk-layernorm, muParam, finding 9's transplant, ...) are not written here:
the model calls the seams of those on in its config (stability.interventions), at the
points marked `seam:`. `n_layers=0` is finding 9's zero-layer (bigram) baseline:
embedding -> final LayerNorm -> head, no attention or MLP.

Attention runs the fused `scaled_dot_product_attention` kernel, unless an intervention on
changes the attention logits (soft-capping): that layer then writes the masked softmax out
(`explicit_attention`). On probe passes (`probe=True`) the logits are also computed in fp32
beside it, so the logged max attention logit per layer is exact. On max-only passes
(`probe=MAX_ONLY`, logging steps of a run whose max logits come from the kernel:
stability.kernel_max) flex_attention's max scores give the same max logit beside it, without
the T x T matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import interventions, kernel_max, sizes
from .config import ModelConfig

# The `probe` value of a max-only pass: each layer's max logit from the attention kernel
# (kernel_max.head_max_logits), no entropy or q/k RMS.
MAX_ONLY = "max"


@dataclass
class AttnProbe:
    """What one attention layer saw on a probe pass (detached 0-d fp32 tensors, no host sync).
    `max_logit` is what the softmax saw; `max_logit_raw`, scale * q k^T before the
    attention_logits seam, only where an intervention changes the logits (else None). A
    max-only pass (MAX_ONLY) fills `max_logit` alone."""
    max_logit: torch.Tensor
    entropy: torch.Tensor | None = None
    q_rms: torch.Tensor | None = None
    k_rms: torch.Tensor | None = None
    max_logit_raw: torch.Tensor | None = None


def rope_tables(seq_len: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (B, H, T, Dh) as one complex multiply
    (x1 + i x2)(cos + i sin): 4x cheaper than strided slices on CPU (docs/performance.md).
    Computed in fp32 (there is no complex bf16) and returned in x's dtype; keeps norms."""
    T = x.shape[-2]
    xf = x.float().unflatten(-1, (-1, 2))
    if xf.storage_offset() % 2 or any(s % 2 for s in xf.stride()[:-1]):
        xf = xf.contiguous()  # view_as_complex needs even strides
    rot = torch.view_as_complex(xf) * torch.complex(cos[:T].float(), sin[:T].float())
    return torch.view_as_real(rot).flatten(-2).to(x.dtype)


def rms(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x.float().pow(2).mean(dim, keepdim=True).sqrt()


def causal_mask(T: int, device=None) -> torch.Tensor:
    """(T, T) bool, True where query i may attend to key j (j <= i)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


@torch.no_grad()
def exact_logits(q: torch.Tensor, k: torch.Tensor, scale: float, seam=None) -> torch.Tensor:
    """scale * q k^T in fp32 (B, H, T, T), passed through `seam` (the layer's attention_logits,
    if any), entries above the diagonal -inf. Autocast is off: under bf16 autocast a matmul
    would round the logits to bf16."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = (q.float() @ k.float().transpose(-2, -1)).mul_(scale)
        logits = seam(logits) if seam is not None else logits
    return logits.masked_fill_(~causal_mask(q.shape[-2], q.device), float("-inf"))


@torch.no_grad()
def probe_stats(q: torch.Tensor, k: torch.Tensor, scale: float, seam=None) -> AttnProbe:
    """Exact fp32 attention logits of one layer -> max logit (after `seam`, the layer's
    attention_logits, and before it when there is one), mean entropy, q/k RMS."""
    logits = exact_logits(q, k, scale, seam)
    entropy = torch.special.entr(logits.softmax(-1)).sum(-1).mean()
    raw = exact_logits(q, k, scale).amax() if seam is not None else None
    return AttnProbe(max_logit=logits.amax(), entropy=entropy, q_rms=rms(q).mean(), k_rms=rms(k).mean(),
                     max_logit_raw=raw)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, seam) -> torch.Tensor:
    """Causal attention written out, for logits an intervention changes (the fused kernel
    cannot): softmax(mask(seam(scale * q k^T))) v, the softmax in fp32."""
    logits = seam((q @ k.transpose(-2, -1)) * scale)
    logits = logits.masked_fill(~causal_mask(q.shape[-2], q.device), float("-inf"))
    return logits.float().softmax(-1).to(v.dtype) @ v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.head_dim = d // hd, hd
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.interventions = interventions.active(cfg, "model")
        self.logit_seams = interventions.overriding(self.interventions, "attention_logits")
        self.scale = 1.0 / math.sqrt(hd)
        for iv, c in self.interventions:  # seam: attention_modules, attention_scale
            iv.attention_modules(c, self)
            self.scale = iv.attention_scale(c, hd) or self.scale

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The attention logits through the interventions that change them (soft-capping)."""
        for iv, c in self.logit_seams:  # seam: attention_logits
            z = iv.attention_logits(c, self, z)
        return z

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, probe: bool | str = False):
        B, T, D = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        for iv, c in self.interventions:  # seam: qkv
            q, k, v = iv.qkv(c, self, q, k, v)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        for iv, c in self.interventions:  # seam: attention_qk
            q, k = iv.attention_qk(c, self, q, k)
        seam = self.logits if self.logit_seams else None
        # Probe and max-only passes measure the logits beside the attention, so they train
        # exactly like ordinary steps: the probe costs one extra q k^T without a backward, the
        # max-only pass one extra kernel forward. A layer with a logit seam is always probed.
        if probe == MAX_ONLY and seam is None:
            stats = AttnProbe(max_logit=kernel_max.head_max_logits(q, k, v, self.scale).amax())
        else:
            stats = probe_stats(q.detach(), k.detach(), self.scale, seam) if probe else None
        if seam is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            y = explicit_attention(q, k, v, self.scale, seam)
        y = y.transpose(1, 2).reshape(B, T, D)
        return self.o_proj(y), stats


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.fc2 = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.layernorm_eps, bias=False)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.layernorm_eps, bias=False)
        self.mlp = MLP(cfg)
        self.layout = interventions.overriding(interventions.active(cfg, "model"), "block")  # one at most

    def forward(self, x, cos, sin, probe=False):
        for iv, c in self.layout:  # seam: block (another layout, e.g. OLMo 2's reordered norms)
            return iv.block(c, self, x, cos, sin, probe)
        a, stats = self.attn(self.ln1(x), cos, sin, probe)
        x = x + a
        return x + self.mlp(self.ln2(x)), stats


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, max_seq_len: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layernorm_eps, bias=False)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.interventions = interventions.active(cfg, "model")
        cos, sin = rope_tables(max_seq_len, cfg.head_dim, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Paper init: embedding N(0, 1/d); every other matrix truncated N(0, 1/fan_in)."""
        d = self.cfg.d_model
        nn.init.normal_(self.embed.weight, std=1.0 / math.sqrt(d))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                std = 1.0 / math.sqrt(module.in_features)
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        for iv, c in self.interventions:  # seam: init
            iv.init(c, self)

    def forward(self, idx: torch.Tensor, probe: bool | str = False):
        """idx (B, T) int64 -> output logits (B, T, V) and, on probe passes, one AttnProbe per
        layer (else None). `probe`: False, True (the fp32 probe: max logit, entropy, q/k RMS),
        or MAX_ONLY (the max logit alone, from the attention kernel: CUDA only,
        kernel_max.unsupported says where)."""
        x = self.embed(idx)
        probes = []
        for block in self.blocks:
            x, stats = block(x, self.rope_cos, self.rope_sin, probe)
            probes.append(stats)
        logits = self.head(self.ln_f(x))
        for iv, c in self.interventions:  # seam: output_logits
            logits = iv.output_logits(c, logits)
        return logits, (probes if probe else None)

    # ---- sizes (counted from the config by stability.sizes; tests/test_model.py checks them) ----
    def n_params(self) -> int:
        return sizes.n_params(self.cfg, self.vocab_size)

    def n_non_embedding_params(self) -> int:
        """The paper's size axis: excludes the input embedding and the output head."""
        return sizes.non_embedding_params(self.cfg)

    def flops_per_token(self, seq_len: int, convention: str = "project") -> int:
        """Training FLOPs per token, `sizes.flops_per_token` (project or PaLM convention)."""
        return sizes.flops_per_token(self.cfg, self.vocab_size, seq_len, convention)


def hidden_matrices(model: Transformer) -> dict[str, nn.Parameter]:
    """The matrices muParam rescales: every Linear inside the blocks."""
    return {n: p for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2}
