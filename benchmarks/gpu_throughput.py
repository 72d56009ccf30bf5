"""Training-step throughput and MFU of the project at ~100M parameters on one GPU, in bf16.

The step is `stability.train.train_step`, the function the training loop runs (schedule,
bf16 autocast forward with fused SDPA, fp32 loss + z-loss, backward, clipping, fused AdamW),
fed by `data.train_batch` from a uint16 token array as the loop is fed from its memmap.
Default shape: gpu.yaml's largest scale g4 (d_model 768, 12 layers, head_dim 64: 85M
non-embedding parameters) with T5's vocabulary (32,128, gpu.yaml's tokenizer; 2 x 24.7M in
the untied embedding and head) and gpu.yaml's batch of 64 x 512 tokens, per-head qk-layernorm,
z-loss 1e-4. Tokens are uniform random: the step's cost does not depend on their values.
`benchmarks/throughput.py` is the CPU benchmark (against a plain reference, CPU clock).

Times are wall seconds between `torch.cuda.synchronize()` calls around chunks of steps,
median over chunks after warm-up steps (cuBLAS heuristics, allocator, compilation).
Logging steps (host reads of every signal) without an attention measurement, with the fp32
attention probe, and with the attention kernel's max scores (`model.MAX_ONLY`,
stability.kernel_max; where the kernel can give them) are timed apart; their cost is
amortised at gpu.yaml's log_every 25 / probe_every 100 (`monitoring_overhead`), both ways:

* `overhead`: max logits on probe steps only (`train.max_logit_source: probe`, gpu.yaml);
* `probe_every_log_step`: the probe at every logging step (a max logit at each, from the probe);
* `kernel`: the kernel's max logits at every logging step, the probe every 100
  (`train.max_logit_source: auto` on CUDA); its target is <= 2% (`KERNEL_OVERHEAD_TARGET`).

FLOPs per training token (forward + backward = 3 x forward, matmuls only), two conventions:

* `6n`: 6 N with N = non-embedding parameters (`Transformer.n_non_embedding_params`: every
  block matrix and LayerNorm gain, not the input embedding, not the output head). Kaplan et
  al. 2020, "Scaling Laws for Neural Language Models", section 2.1 (C = 6N per token,
  the context-dependent attention term dropped); the same 6N D that Chinchilla (Hoffmann et
  al. 2022) uses for training compute.
* `palm`: 6 N_mm + 12 L T d, N_mm = non-embedding parameters + output head (every matrix
  that is multiplied; the input embedding is a lookup), L layers, T tokens per sequence,
  d = heads x head_dim. PaLM (Chowdhery et al. 2022), Appendix B (model FLOPs utilisation:
  6N + 12 L H Q T); nanoGPT's `estimate_mfu` and llm.c use the same formula with N = the
  parameters of a model with tied input/output embeddings, which counts that matrix once,
  as N_mm does. 12 L T d counts q k^T and the weighted sum of v at full T x T: causal
  masking is not discounted.
* beside them, the project's own `Transformer.flops_per_token` (6 N_mm + 6 L T d: causal
  attention, Kaplan's attention term, with the head included), which stability/resources.py
  uses. All three come from stability/sizes.py.

MFU = achieved FLOP/s (FLOPs per token x tokens/s) over a peak, two peaks:
* datasheet dense bf16 tensor-core rate by device name (`DATASHEET_BF16_TFLOPS`; sparsity
  doubles these and is not used); unknown devices: none, or `--peak-tflops`.
* measured: `torch.mm` in the step's dtype on this device, best over square 8192/4096
  matrices and the model's own GEMM shapes, median of repeats (CUDA events on GPU).

    python benchmarks/gpu_throughput.py                 # ~30 s on an H200 (plus start-up)
    python benchmarks/gpu_throughput.py --compile       # train.compile=true; compilation ~1 min, not timed
    python benchmarks/gpu_throughput.py --device cpu --scale 64x2x32 --vocab 256 --batch 4 --seq-len 64 \
        --warmup 1 --chunks 2 --chunk 2                 # plumbing check on a machine without a GPU

The last line printed is one JSON object; `--json PATH` writes it too.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stability import data as data_mod  # noqa: E402
from stability.config import load as load_config  # noqa: E402
from stability import kernel_max  # noqa: E402
from stability.model import MAX_ONLY, Transformer  # noqa: E402
from stability.monitor import output_stats  # noqa: E402
from stability.optim import build_optimizer  # noqa: E402
from stability.train import autocast_for, train_step  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, matched against
# torch.cuda.get_device_name(). Sources: NVIDIA H200 Tensor Core GPU datasheet (H200 SXM and
# NVL list "BF16 Tensor Core 1,979 TFLOPS" with sparsity, i.e. 989 dense); NVIDIA H100
# datasheet (SXM 1,979 / PCIe 1,513 with sparsity); NVIDIA A100 datasheet (312 dense).
DATASHEET_BF16_TFLOPS = (  # (substring of the device name, TFLOP/s); first match wins
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)
# gpu.yaml's cadence of host-syncing logging steps, for the amortised monitoring cost.
LOG_EVERY, PROBE_EVERY = 25, 100
KERNEL_OVERHEAD_TARGET = 0.02  # issue 17: monitoring overhead with kernel max scores


def datasheet_peak_tflops(name: str) -> float | None:
    for key, tflops in DATASHEET_BF16_TFLOPS:
        if key in name:
            return tflops
    return None


def flops_per_token(model: Transformer, seq_len: int) -> dict[str, int]:
    """Training FLOPs per token in each convention of the module docstring."""
    return {"6n": 6 * model.n_non_embedding_params(), "palm": model.flops_per_token(seq_len, "palm"),
            "project": model.flops_per_token(seq_len)}


class Timer:
    """Wall seconds of a block of device work: CUDA events on GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.s = self.start.elapsed_time(self.end) / 1e3
        else:
            self.s = time.perf_counter() - self.t0


def matmul_tflops(device: torch.device, dtype: torch.dtype, shapes: list[tuple[int, int, int]],
                  repeats: int, block_tflop: float) -> dict[str, float]:
    """TFLOP/s of torch.mm (m x k) @ (k x n) per shape: median over `repeats` blocks of
    back-to-back calls, each block ~block_tflop of work."""
    out = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
        flop = 2 * m * k * n
        inner = max(1, int(block_tflop * 1e12 // flop))
        torch.mm(a, b)
        rates = []
        for _ in range(repeats):
            with Timer(device) as t:
                for _ in range(inner):
                    torch.mm(a, b)
            rates.append(flop * inner / t.s / 1e12)
        out[f"{m}x{k}x{n}"] = statistics.median(rates)
        del a, b
    return out


def make_cfg(args):
    d, L, hd = (int(v) for v in args.scale.lower().split("x"))
    return load_config(overrides={
        "model.d_model": d, "model.n_layers": L, "model.head_dim": hd, "model.vocab_size": args.vocab,
        "model.qk_layernorm": "per_head", "train.batch_size": args.batch, "train.seq_len": args.seq_len,
        "train.steps": 10_000, "train.device": args.device, "train.precision": args.precision,
        "train.compile": args.compile, "optim.lr": 1e-3, "optim.warmup_steps": 100, "loss.z_loss": 1e-4,
    })


def random_tokens(vocab: int, n: int, seed: int = 0) -> data_mod.TokenData:
    """Uniform tokens in the dtype the cache uses (uint16 below 65,536 ids), stride 1 as for text."""
    dtype = np.uint16 if vocab <= 65535 else np.uint32
    rng = np.random.default_rng(seed)
    train = rng.integers(0, vocab, size=n, dtype=np.int64).astype(dtype)
    return data_mod.TokenData(train, train[: n // 10], {"vocab_size": vocab, "window_stride": 1})


def monitoring_overhead(step_s: float, log_s: float, log_probe_s: float, log_kernel_s: float | None,
                        kernel_unsupported: str | None = None) -> dict:
    """Monitoring cost as a fraction of the plain step time, amortised at LOG_EVERY /
    PROBE_EVERY, three ways (module docstring), from the median seconds of a plain step, a
    logging step without attention measurement, one with the probe and one with the kernel's
    max scores (None where `kernel_unsupported` says why not)."""
    kernel = (None if log_kernel_s is None else
              ((log_kernel_s - step_s) / LOG_EVERY + (log_probe_s - log_kernel_s) / PROBE_EVERY) / step_s)
    return {"log_every": LOG_EVERY, "probe_every": PROBE_EVERY,
            "overhead": ((log_s - step_s) / LOG_EVERY + (log_probe_s - log_s) / PROBE_EVERY) / step_s,
            "probe_every_log_step": (log_probe_s - step_s) / LOG_EVERY / step_s,
            "kernel": kernel, "kernel_unsupported": kernel_unsupported, "kernel_target": KERNEL_OVERHEAD_TARGET,
            "kernel_meets_target": None if kernel is None else kernel <= KERNEL_OVERHEAD_TARGET}


def measure(args) -> dict:
    device = torch.device(args.device)
    cfg = make_cfg(args)
    t = cfg.train
    tokens = random_tokens(args.vocab, max(4 * t.batch_size * (t.seq_len + 1), 1_000_000))
    torch.manual_seed(0)
    model = Transformer(cfg.model, args.vocab, t.seq_len).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    result = {"device": device.type, "precision": args.precision, "compile": args.compile,
              "d_model": cfg.model.d_model, "n_layers": cfg.model.n_layers, "head_dim": cfg.model.head_dim,
              "vocab": args.vocab, "batch_size": t.batch_size, "seq_len": t.seq_len,
              "params": model.n_params(), "non_embedding_params": model.n_non_embedding_params(),
              "flops_per_token": flops_per_token(model, t.seq_len)}
    kernel_reason = kernel_max.unsupported(device)
    result["kernel_max_unsupported"] = kernel_reason
    forward = model
    if args.compile:
        # The first step's loss is computed from the init weights, before the update: the
        # compiled forward must give the eager loss of the same batch.
        x, y = data_mod.train_batch(tokens, 0, t.batch_size, t.seq_len, cfg.seed)
        with torch.no_grad(), autocast_for(cfg, device):
            eager = float(output_stats(model(x.to(device))[0], y.to(device))["ce"])
        forward = torch.compile(model)
        t0 = time.perf_counter()
        got = float(train_step(model, forward, optimizer, cfg, device, x, y, 1, False, False)[0])  # fwd + bwd graphs
        train_step(model, forward, optimizer, cfg, device, x, y, 2, True, True)  # the probe=True graph
        if kernel_reason is None:  # the max-only graph (and the kernel's own compilation)
            train_step(model, forward, optimizer, cfg, device, x, y, 2, True, MAX_ONLY)
        if device.type == "cuda":
            torch.cuda.synchronize()
        result["compile_s"] = time.perf_counter() - t0
        result["compile_vs_eager_first_loss"] = {"eager": eager, "compiled": got, "rel_diff": abs(got - eager) / abs(eager)}

    step = 3

    def run(n: int, log: bool, probe: bool | str) -> float:
        nonlocal step
        with Timer(device) as tm:
            for _ in range(n):
                train_step(model, forward, optimizer, cfg, device, *data_mod.train_batch(
                    tokens, step, t.batch_size, t.seq_len, cfg.seed), step, log, probe)
                step += 1
        return tm.s / n

    run(args.warmup, False, False)
    run(1, True, True)  # warm the logging path (and its probe graph under compile)
    if kernel_reason is None:
        run(1, True, MAX_ONLY)  # and the kernel's (compiled once per shape)
    plain, log_noprobe, log_probe, log_kernel = [], [], [], []
    for _ in range(args.chunks):
        plain.append(run(args.chunk, False, False))
        log_noprobe.append(run(1, True, False))
        log_probe.append(run(1, True, True))
        if kernel_reason is None:
            log_kernel.append(run(1, True, MAX_ONLY))
    step_s = statistics.median(plain)
    tok = t.batch_size * t.seq_len
    tokens_per_s = tok / step_s
    result.update(step_s=step_s, step_s_chunks=plain, tokens_per_s=tokens_per_s,
                  log_step_s=statistics.median(log_noprobe), log_probe_step_s=statistics.median(log_probe),
                  log_kernel_step_s=statistics.median(log_kernel) if log_kernel else None)
    result["monitoring_overhead"] = monitoring_overhead(step_s, result["log_step_s"], result["log_probe_step_s"],
                                                        result["log_kernel_step_s"], kernel_reason)
    if device.type == "cuda":
        result["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del model, optimizer, forward
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # The matmul peak in the step's dtype: bf16 where autocast runs the GEMMs in bf16.
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    mm_dtype = torch.bfloat16 if bf16 else torch.float32
    d, n_tok = cfg.model.d_model, tok
    square = (8192, 4096) if device.type == "cuda" else (512,)
    shapes = [(s, s, s) for s in square] + [(n_tok, d, d), (n_tok, d, 4 * d), (n_tok, 4 * d, d), (n_tok, d, args.vocab)]
    rates = matmul_tflops(device, mm_dtype, shapes, repeats=args.mm_repeats,
                          block_tflop=5.0 if device.type == "cuda" else 0.002)
    measured_peak = max(rates.values())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    sheet = args.peak_tflops or (datasheet_peak_tflops(name) if device.type == "cuda" else None)
    achieved = {k: v * tokens_per_s / 1e12 for k, v in result["flops_per_token"].items()}
    result.update(
        device_name=name, matmul_dtype=str(mm_dtype).replace("torch.", ""), matmul_tflops=rates,
        matmul_peak_tflops=measured_peak, datasheet_peak_tflops=sheet,
        datasheet_source=("--peak-tflops" if args.peak_tflops else "DATASHEET_BF16_TFLOPS" if sheet else None),
        achieved_tflops=achieved,
        mfu_vs_datasheet={k: (v / sheet if sheet else None) for k, v in achieved.items()},
        mfu_vs_matmul={k: v / measured_peak for k, v in achieved.items()},
    )
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (plumbing check only)")
    p.add_argument("--scale", default="768x12x64", help="d_model x n_layers x head_dim (default: gpu.yaml's g4)")
    p.add_argument("--vocab", type=int, default=32128, help="vocabulary (default: T5's 32,128, gpu.yaml's tokenizer)")
    p.add_argument("--batch", type=int, default=64, help="sequences per step (default: gpu.yaml's 64)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default: gpu.yaml's 512)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="train.precision (auto: bf16 autocast on CUDA, fp32 on CPU)")
    p.add_argument("--compile", action="store_true", help="train.compile=true: torch.compile(model); compilation not timed")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default %(default)s)")
    p.add_argument("--chunks", type=int, default=5, help="timed chunks (default %(default)s)")
    p.add_argument("--chunk", type=int, default=10, help="plain steps per chunk (default %(default)s)")
    p.add_argument("--mm-repeats", type=int, default=5, help="timed blocks per matmul shape (default %(default)s)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak, if not in the datasheet table")
    p.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device (use --device cpu for a plumbing check)")

    t0 = time.perf_counter()
    r = measure(args)
    r["wall_s"] = time.perf_counter() - t0
    r["torch"] = torch.__version__
    fpt = r["flops_per_token"]
    print(f"{r['device_name']}: d_model={r['d_model']} n_layers={r['n_layers']} head_dim={r['head_dim']} "
          f"vocab={r['vocab']} batch {r['batch_size']} x {r['seq_len']} tokens, {r['precision']} precision"
          f"{', torch.compile' if r['compile'] else ''}")
    print(f"  params {r['params'] / 1e6:.1f}M ({r['non_embedding_params'] / 1e6:.1f}M non-embedding); FLOPs/token: "
          + ", ".join(f"{k} {v / 1e6:.0f}M" for k, v in fpt.items()))
    if "compile_s" in r:
        c = r["compile_vs_eager_first_loss"]
        print(f"  compilation (first plain, probe and max-only steps) {r['compile_s']:.1f} s; first-batch loss eager {c['eager']:.5f} "
              f"compiled {c['compiled']:.5f} (rel diff {c['rel_diff']:.1e})")
    print(f"  step {r['step_s'] * 1e3:.1f} ms (chunks {min(r['step_s_chunks']) * 1e3:.1f}..{max(r['step_s_chunks']) * 1e3:.1f}) "
          f"-> {r['tokens_per_s']:,.0f} tokens/s")
    mo = r["monitoring_overhead"]
    kernel_ms = "n/a" if r["log_kernel_step_s"] is None else f"{r['log_kernel_step_s'] * 1e3:.1f} ms"
    print(f"  logging step {r['log_step_s'] * 1e3:.1f} ms, with probe {r['log_probe_step_s'] * 1e3:.1f} ms, with kernel "
          f"max scores {kernel_ms} -> monitoring overhead at log_every={LOG_EVERY}, probe_every={PROBE_EVERY}: "
          f"{mo['overhead']:.4f} (max logits on probe steps), {mo['probe_every_log_step']:.4f} (probe at every logging "
          f"step), " + (f"{mo['kernel']:.4f} (kernel at every logging step; target <= {KERNEL_OVERHEAD_TARGET})"
                        if mo["kernel"] is not None else f"kernel n/a: {mo['kernel_unsupported']}"))
    print(f"  {r['matmul_dtype']} matmul TFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in r["matmul_tflops"].items())
          + f" -> measured peak {r['matmul_peak_tflops']:.1f}; datasheet {r['datasheet_peak_tflops']}")
    for k in fpt:
        sheet = r["mfu_vs_datasheet"][k]
        print(f"  {k:8s} achieved {r['achieved_tflops'][k]:8.2f} TFLOP/s  MFU vs datasheet "
              f"{'n/a' if sheet is None else f'{sheet:.3f}'}  vs measured matmul {r['mfu_vs_matmul'][k]:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    print(json.dumps(r))
    return r


if __name__ == "__main__":
    main()
