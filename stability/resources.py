"""What a training job asks its scheduler for: memory and runtime estimated from the model
and the device, so SLURM gets realistic requests and a workstation never oversubscribes."""
from __future__ import annotations

import math

from . import sizes
from .config import RunConfig

# Sustained training throughput assumed per device (FLOP/s), deliberately pessimistic:
# measured ~25 GFLOP/s per CPU thread here (benchmarks/throughput.py), ~150 TFLOP/s bf16 on an H100-class GPU.
CPU_FLOPS_PER_THREAD = 10e9
GPU_FLOPS = 100e12


def vocab_estimate(cfg: RunConfig) -> int:
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    if cfg.data.source == "synthetic":
        return cfg.data.vocab_size
    return 257 if cfg.data.tokenizer == "bytes" and cfg.data.source == "text" else max(cfg.data.bpe_vocab_size, 32_128)


def mem_mb(cfg: RunConfig) -> int:
    """Weights + grads + two Adam moments, activations of one batch, the logits, torch itself."""
    t, m = cfg.train, cfg.model
    states = 4 * 4 * sizes.n_params(m, vocab_estimate(cfg))
    tokens = t.batch_size * t.seq_len
    activations = 4 * tokens * m.d_model * m.n_layers * 24
    attention = 4 * t.batch_size * (m.d_model // m.head_dim) * t.seq_len * t.seq_len * m.n_layers * 3
    logits = 4 * tokens * vocab_estimate(cfg) * 3
    return int(1500 + (states + activations + attention + logits) / 2**20 * 1.5)


def runtime_min(cfg: RunConfig, threads: int, gpu: bool) -> int:
    """Minutes to request: training FLOPs over a pessimistic throughput, doubled, plus setup."""
    fpt = sizes.flops_per_token(cfg.model, vocab_estimate(cfg), cfg.train.seq_len)
    total = fpt * cfg.train.steps * cfg.train.batch_size * cfg.train.seq_len
    rate = GPU_FLOPS if gpu else CPU_FLOPS_PER_THREAD * max(threads, 1)
    return int(math.ceil(5 + 2 * total / rate / 60))
