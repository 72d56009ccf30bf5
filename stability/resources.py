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
PROCESS_MB = 1500  # torch itself and the interpreter, once per job
SETUP_MIN = 5  # process start, data loading, the step-0 row, per job


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
    return int(PROCESS_MB + (states + activations + attention + logits) / 2**20 * 1.5)


def runtime_min(cfg: RunConfig, threads: int, gpu: bool) -> int:
    """Minutes to request: training FLOPs over a pessimistic throughput, doubled, plus setup."""
    fpt = sizes.flops_per_token(cfg.model, vocab_estimate(cfg), cfg.train.seq_len)
    total = fpt * cfg.train.steps * cfg.train.batch_size * cfg.train.seq_len
    rate = GPU_FLOPS if gpu else CPU_FLOPS_PER_THREAD * max(threads, 1)
    return int(math.ceil(SETUP_MIN + 2 * total / rate / 60))


def sweep_mem_mb(cfgs: list[RunConfig]) -> int:
    """MB for one job training `cfgs` as a fused sweep (stability.fused): every member's
    weights, Adam moments, activations and logits are held at once; torch once."""
    return PROCESS_MB + sum(mem_mb(c) - PROCESS_MB for c in cfgs)


def sweep_runtime_min(cfgs: list[RunConfig], threads: int, gpu: bool) -> int:
    """Minutes for one job training `cfgs` fused: the members' training FLOPs add up (a
    pessimistic bound where fusing pays, which is measured, not assumed); setup once."""
    return SETUP_MIN + sum(runtime_min(c, threads, gpu) - SETUP_MIN for c in cfgs)
