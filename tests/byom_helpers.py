"""Models from outside the project for the monitor's tests (stability.attach): a nanoGPT-style
module written by hand, tiny randomly initialised GPT-2 and Llama from `transformers`
configs (no download), learnable token data, a monitored training loop, and exact fp64
recomputes of each model's attention logits from its own weights."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from stability.attach import Monitor, observe_attention_logits

VOCAB, SEQ = 64, 16


# ---- nanoGPT (Karpathy's model.py, trimmed): attention by hand, or through SDPA -----------

class NanoAttention(nn.Module):
    def __init__(self, d: int, heads: int, flash: bool):
        super().__init__()
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.n_head, self.flash = heads, flash
        self.register_buffer("bias", torch.tril(torch.ones(SEQ, SEQ)).view(1, 1, SEQ, SEQ))

    def qk(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        return [t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)]

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qk(x)
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            att = observe_attention_logits(att)  # the one-line hook
            y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class NanoBlock(nn.Module):
    def __init__(self, d: int, heads: int, flash: bool):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = NanoAttention(d, heads, flash)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(d, 4 * d), "c_proj": nn.Linear(4 * d, d)})

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, d: int = 32, layers: int = 2, heads: int = 4, flash: bool = False):
        super().__init__()
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(VOCAB, d), "wpe": nn.Embedding(SEQ, d),
            "h": nn.ModuleList(NanoBlock(d, heads, flash) for _ in range(layers)), "ln_f": nn.LayerNorm(d)})
        self.lm_head = nn.Linear(d, VOCAB, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as nanoGPT

    def forward(self, idx, targets=None):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        return logits, loss


# ---- transformers models -----------------------------------------------------------------

def tiny_gpt2(d: int = 32, layers: int = 2, heads: int = 4):
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(n_layer=layers, n_embd=d, n_head=heads, vocab_size=VOCAB, n_positions=SEQ,
                     bos_token_id=0, eos_token_id=0, attn_implementation="sdpa", loss_type="ForCausalLM",
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # no dropout: steps are repeatable
    return GPT2LMHeadModel(cfg)


def tiny_llama(d: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(num_hidden_layers=layers, hidden_size=d, intermediate_size=2 * d, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, vocab_size=VOCAB, max_position_embeddings=SEQ,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation="sdpa",
                      loss_type="ForCausalLM")
    return LlamaForCausalLM(cfg)


# ---- exact recomputes, fp64, from each model's own weights -------------------------------

def capture_inputs(modules) -> tuple[list, list]:
    """Forward pre-hooks storing each module's (args, kwargs) per call; (store, handles)."""
    store, handles = [], []
    for i, m in enumerate(modules):
        handles.append(m.register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: store.append((i, args, kwargs)), with_kwargs=True))
    return store, handles


def _masked_max(z: torch.Tensor, allowed: torch.Tensor) -> float:
    return float(z.detach().masked_fill(~allowed, float("-inf")).amax())


def causal(T: int) -> torch.Tensor:
    return torch.ones(T, T, dtype=torch.bool).tril()


def ref_gpt2_layer(attn, h: torch.Tensor, key_valid: torch.Tensor | None = None) -> float:
    """Max attention logit of one GPT2Attention (or NanoAttention) on its input h (B, T, d)."""
    w, b = attn.c_attn.weight.double(), attn.c_attn.bias.double()
    # GPT-2's Conv1D holds its weight as (in, out); nn.Linear as (out, in)
    qkv = F.linear(h.double(), w, b) if isinstance(attn.c_attn, nn.Linear) else h.double() @ w + b
    B, T, _ = h.shape
    d = qkv.shape[-1] // 3
    heads = getattr(attn, "num_heads", None) or attn.n_head
    q, k, _ = [t.view(B, T, heads, d // heads).transpose(1, 2) for t in qkv.split(d, dim=2)]
    z = q @ k.transpose(-2, -1) / math.sqrt(d // heads)
    allowed = causal(T) if key_valid is None else causal(T) & key_valid[:, None, None, :]
    return _masked_max(z, allowed)


def ref_llama_layer(attn, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    key_valid: torch.Tensor | None = None) -> float:
    """Max attention logit of one LlamaAttention: q, k projected, RoPE applied, fp64."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    B, T, _ = h.shape
    hd = attn.head_dim
    q = F.linear(h.double(), attn.q_proj.weight.double()).view(B, T, -1, hd).transpose(1, 2)
    k = F.linear(h.double(), attn.k_proj.weight.double()).view(B, T, -1, hd).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos.double(), sin.double())
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    z = q @ k.transpose(-2, -1) * hd ** -0.5
    allowed = causal(T) if key_valid is None else causal(T) & key_valid[:, None, None, :]
    return _masked_max(z, allowed)


# ---- data and a monitored loop -----------------------------------------------------------

def batch(step: int, B: int = 8, seed: int = 0) -> torch.Tensor:
    """(B, SEQ) int64 tokens a model can learn: counting sequences mod VOCAB with random strides."""
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    start = torch.randint(0, VOCAB, (B, 1), generator=g)
    stride = torch.randint(1, 4, (B, 1), generator=g)
    return (start + stride * torch.arange(SEQ)) % VOCAB


def train_hf(model, out: Path, steps: int, lr: float, every: int = 5, data: str = "counting", seed: int = 0,
             **monitor_kw) -> Monitor:
    """Train a transformers causal LM with AdamW under the monitor; returns the closed monitor."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    mon = Monitor(model, opt, out, every=every, data=data, seed=seed, **monitor_kw)
    for step in range(1, steps + 1):
        x = batch(step, seed=seed)
        with mon.step(step):
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    mon.close()
    return mon
