"""Parameter and FLOP counts of a model, from its config alone (no torch, no model built).

The one owner of these numbers: `model.Transformer`, `resources` (job requests) and the
benchmarks all call these functions; tests/test_model.py checks them against a built model.
"""
from __future__ import annotations

from . import interventions
from .config import ModelConfig

# Attention-score FLOPs per token and layer, in units of seq_len x d_model (docs/metrics.md).
# "project": causal attention, only the lower half of the T x T scores counted (6 L T d,
# Kaplan et al. 2020's 2 L T d forward); "palm": the full T x T (12 L T d), PaLM
# (Chowdhery et al. 2022) Appendix B, as nanoGPT's estimate_mfu and llm.c count it.
ATTENTION_FLOPS = {"project": 6, "palm": 12}


def non_embedding_params(m: ModelConfig) -> int:
    """The paper's size axis: every block matrix and LayerNorm gain and the final LayerNorm;
    not the input embedding, not the output head."""
    d = m.d_model
    per_block = 4 * d * d + 2 * m.mlp_ratio * d * d + 2 * d  # q, k, v, o; MLP; two LayerNorm gains
    per_block += sum(iv.block_params(c) for iv, c in interventions.active(m, "model"))  # seam: block_params
    return m.n_layers * per_block + d


def embedding_params(m: ModelConfig, vocab: int) -> int:
    """The untied input embedding and output head: 2 x vocab x d_model."""
    return 2 * vocab * m.d_model


def n_params(m: ModelConfig, vocab: int) -> int:
    """Every parameter of `model.Transformer(m, vocab, ...)`."""
    return non_embedding_params(m) + embedding_params(m, vocab)


def flops_per_token(m: ModelConfig, vocab: int, seq_len: int, convention: str = "project") -> int:
    """Training FLOPs per token (forward + backward = 3 x forward): 6 x the multiplied
    parameters (non-embedding + head; the embedding is a lookup) plus the attention scores,
    `ATTENTION_FLOPS[convention]` x n_layers x seq_len x d_model. Raises KeyError for an
    unknown convention."""
    matmul_params = non_embedding_params(m) + vocab * m.d_model
    return 6 * matmul_params + ATTENTION_FLOPS[convention] * m.n_layers * seq_len * m.d_model

