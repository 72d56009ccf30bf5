"""Training-step throughput of the project against a plain PyTorch reference, in one process.

What it measures, per model scale (default: d=64 L=2 head_dim 16 and d=128 L=4 head_dim 32,
batch 16 x 128 tokens, byte vocabulary 256, the study's CPU setting of one torch thread):

* project    the inner loop of stability/train.py, line for line minus file I/O, progress
             and checkpoints: set_lr(schedule), train_batch, autocast_for + forward (fused
             SDPA; on a logging step also probe_stats beside it, fp32, no_grad),
             output_stats (one logsumexp for CE and z-loss), zero_grad, backward,
             grad_stats (logging steps), clip_grad_norm_(foreach=True), build_optimizer's
             AdamW (fused=True) step, and on a logging step the metrics row with every host
             read and the divergence detector's update.
* reference  the same network written plainly in this file: separate q/k/v Linear,
             nn.LayerNorm, explicit softmax attention with a materialised causal mask,
             F.cross_entropy (+ a separate logsumexp for the z-loss), clip_grad_norm_,
             torch.optim.AdamW with default implementation flags. Same shapes, same
             hyper-parameters, loaded from the project model's state dict, so the two loss
             trajectories can be compared step by step.
* prototypes candidate changes measured the same way (never used by the pipeline itself):
             bf16 autocast (train.precision=bf16), 2 threads, torch.compile (train.compile).
* hot spots  the two places the project differs from the reference (CE + z-loss, attention
             core), each alone, in ms per training step.
* matmul     torch.mm of square fp32 matrices (1024, 2048) and of the model's own GEMM
             shapes: the machine's achievable fp32 matmul rate.
* logging    a logging step as train.py does it every log_every steps: probe=True forward,
             grad_stats before clipping, update_stats after the step, the host reads of
             every metric; amortised at log_every.

The machine may be shared, so nothing is timed in isolation: every round runs a chunk of
steps of each contestant (in alternating order) and one matmul measurement back to back,
rounds are repeated, and every figure is a median over rounds (per-step times) after one
warm-up round. Times are this process's CPU seconds by default (--clock cpu): with one
torch thread the step runs on the calling thread, so time the OS gives other processes is
not charged to the step. Wall-clock tokens/s are printed beside them.

    python benchmarks/throughput.py --quick          # ~25 s on a 2-core machine
    python benchmarks/throughput.py                  # ~1 min (50 s with a 2-run study training beside it)
    python benchmarks/throughput.py --profile        # + torch.profiler table of the project step

MFU is reported in two FLOP conventions (docs/performance.md): the project's
(`mfu_vs_matmul_peak`, 6 L T d for causal attention) and PaLM's, which nanoGPT and llm.c use
(`mfu_vs_matmul_peak_palm`, 12 L T d).

The last line printed is one JSON object (speedup_vs_reference, mfu_vs_matmul_peak,
monitoring_overhead, tokens_per_s, ... for the largest scale; every scale under "scales").
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import emit, machine  # noqa: E402
from stability import data as data_mod  # noqa: E402
from stability.config import load as load_config  # noqa: E402
from stability.model import Transformer  # noqa: E402
from stability.monitor import DivergenceDetector, output_stats  # noqa: E402
from stability.optim import build_optimizer, schedule  # noqa: E402
from stability.train import evaluate, train_step  # noqa: E402

VOCAB = 256
CLOCK = time.process_time  # --clock: CPU seconds of this process (robust to a shared machine) or wall
DEFAULT_SCALES = "64x2x16,128x4x32"


# ---- the plain reference --------------------------------------------------------------------

def ref_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) by position * inv_freq[i]."""
    T = x.shape[-2]
    cos, sin = cos[:T], sin[:T]
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class RefAttention(nn.Module):
    def __init__(self, d: int, hd: int, max_len: int, eps: float):
        super().__init__()
        self.h, self.hd = d // hd, hd
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.q_norm = nn.LayerNorm(hd, eps=eps, bias=False)
        self.k_norm = nn.LayerNorm(hd, eps=eps, bias=False)
        self.register_buffer("mask", torch.ones(max_len, max_len, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x, cos, sin):
        B, T, D = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.h, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.h, self.hd).transpose(1, 2)
        q, k = ref_rope(self.q_norm(q), cos, sin), ref_rope(self.k_norm(k), cos, sin)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.hd))
        att = att.masked_fill(~self.mask[:T, :T], float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, D)
        return self.o_proj(y)


class RefBlock(nn.Module):
    def __init__(self, d: int, hd: int, max_len: int, eps: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d, eps=eps, bias=False)
        self.attn = RefAttention(d, hd, max_len, eps)
        self.ln2 = nn.LayerNorm(d, eps=eps, bias=False)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(d, 4 * d, bias=False)
        self.mlp.fc2 = nn.Linear(4 * d, d, bias=False)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.ln1(x), cos, sin)
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.ln2(x))))


class RefTransformer(nn.Module):
    """Parameter names match stability.model.Transformer, so load_state_dict copies an init."""

    def __init__(self, d: int, n_layers: int, hd: int, vocab: int, max_len: int, eps: float = 1e-6, base: float = 1e4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(RefBlock(d, hd, max_len, eps) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d, eps=eps, bias=False)
        self.head = nn.Linear(d, vocab, bias=False)
        inv_freq = 1.0 / base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        ang = torch.arange(max_len, dtype=torch.float32)[:, None] * inv_freq[None, :]
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def forward(self, idx):
        x = self.embed(idx)
        for b in self.blocks:
            x = b(x, self.cos, self.sin)
        return self.head(self.ln_f(x))


# ---- contestants -------------------------------------------------------------------------

@dataclass
class Contestant:
    name: str
    step: object  # callable(step_index, log: bool) -> loss tensor
    threads: int
    times: list = field(default_factory=list)  # per-round median plain-step seconds
    log_times: list = field(default_factory=list)  # logging-step seconds
    losses: dict = field(default_factory=dict)  # step -> ce
    note: str = ""
    logs: bool = False  # the last step of every chunk is a logging step
    all_plain: list = field(default_factory=list)  # every timed plain step (for the best-case figures)
    wall_times: list = field(default_factory=list)  # per-round median plain-step wall seconds


def bench_tokens(n_seq: int = 1200) -> data_mod.TokenData:
    """A small synthetic token cache in memory: the same generator and batch function as the pipeline."""
    train_tok, _ = data_mod.generate_synthetic(n_seq * 129, 128, VOCAB, 0.06, 0.05, 1234, 0)
    val_tok, h = data_mod.generate_synthetic(64 * 129, 128, VOCAB, 0.06, 0.05, 1234, 1)
    return data_mod.TokenData(train_tok, val_tok, {"vocab_size": VOCAB, "window_stride": 129, "entropy_floor": h})


def make_cfg(d: int, L: int, hd: int, steps: int, lr: float):
    return load_config(overrides={
        "model.d_model": d, "model.n_layers": L, "model.head_dim": hd, "model.vocab_size": VOCAB,
        "train.batch_size": 16, "train.seq_len": 128, "train.steps": steps, "train.log_every": 10,
        "optim.lr": lr, "optim.warmup_steps": min(30, steps), "optim.weight_decay": 1e-4,
        "optim.independent_weight_decay": True, "loss.z_loss": 1e-4, "model.qk_layernorm": "per_head",
    })


def variant(cfg, **train):
    """cfg with some train.* fields changed (train.precision, train.compile): the prototypes
    switch exactly what the config switches in train.py."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


def project_contestant(name, cfg, tokens, init_state, threads, init_loss, *, logs=True) -> Contestant:
    """stability/train.py's inner loop through its own train_step (minus file I/O, progress,
    checkpoints, and evaluation, which is timed on its own). A step logs when the benchmark says so (the
    last step of every chunk) instead of at step % log_every == 0.

    cfg.train.precision and cfg.train.compile select the bf16 and compile prototypes, as in
    train.py.
    """
    t = cfg.train
    device = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.model, VOCAB, t.seq_len).to(device)
    model.load_state_dict(init_state)
    optimizer = build_optimizer(model, cfg.optim)
    notes = []
    if t.precision == "bf16":
        notes.append("bf16 autocast")
    if threads != 1:
        notes.append(f"{threads} threads")
    note = "; ".join(notes) or "train.py (complex RoPE, SDPA + fp32 probe, AdamW fused=True, clip foreach=True)"
    forward = torch.compile(model) if t.compile else model
    detector = DivergenceDetector(init_loss, t.divergence_margin, t.divergence_window)
    tokens_per_step = t.batch_size * t.seq_len
    rows: list[dict] = []
    window = {"start": time.perf_counter(), "steps": 0}

    def step(i: int, log: bool):
        # stability/train.py's loop body: the batch, then train.train_step itself.
        x, y = data_mod.train_batch(tokens, i, t.batch_size, t.seq_len, cfg.seed)
        probe_now = log and (t.probe_every == 0 or i % t.probe_every == 0)
        ce, signals = train_step(model, forward, optimizer, cfg, device, x, y, i, log, probe_now)
        window["steps"] += 1
        if log:
            elapsed = time.perf_counter() - window["start"]
            row = {"step": i, "tokens": i * tokens_per_step, **signals, "val_loss": None,
                   "tokens_per_s": window["steps"] * tokens_per_step / max(elapsed, 1e-9)}
            rows.append(row)  # (train.py evaluates here every eval_every steps: timed separately)
            detector.update(i, row["loss"], row["grad_norm"])
            window["start"], window["steps"] = time.perf_counter(), 0
            assert math.isfinite(row["loss"]) and not detector.diverged, row
        return ce

    c = Contestant(name, step, threads, note=note, logs=logs)
    c.model, c.cfg, c.forward, c.rows = model, cfg, forward, rows
    return c


def reference_contestant(cfg, tokens, init_state, threads, project_opt_groups) -> Contestant:
    t, m, o = cfg.train, cfg.model, cfg.optim
    model = RefTransformer(m.d_model, m.n_layers, m.head_dim, VOCAB, t.seq_len, m.layernorm_eps, m.rope_base)
    model.load_state_dict(init_state)
    # The project's decay split (matrices decay, LayerNorm gains do not) with torch's defaults
    # for the implementation: on CPU that is the per-parameter for-loop AdamW.
    ref_params = dict(model.named_parameters())
    groups = [{"params": [ref_params[n] for n in names], "lr": g["lr"], "weight_decay": g["weight_decay"]}
              for names, g in project_opt_groups]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    peaks = [g["lr"] for g in groups]

    def step(i: int, log: bool):
        s = schedule(i, o, t.steps)
        for g, p in zip(opt.param_groups, peaks):
            g["lr"] = p * s
        x, y = data_mod.train_batch(tokens, i, t.batch_size, t.seq_len, cfg.seed)
        logits = model(x)
        ce = F.cross_entropy(logits.view(-1, VOCAB), y.reshape(-1))
        loss = ce + cfg.loss.z_loss * torch.logsumexp(logits, dim=-1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        return ce.detach()

    return Contestant("reference", step, threads, note="explicit attention, F.cross_entropy, AdamW(default flags)",
                      logs=False)


def named_groups(model: nn.Module, optimizer: torch.optim.Optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return [([names[id(p)] for p in g["params"]], g) for g in optimizer.param_groups]


# ---- matmul peak --------------------------------------------------------------------------

def gemm_shapes(d: int, tokens: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of the model's forward GEMMs (the backward ones are the same sizes transposed)."""
    return [(tokens, d, d), (tokens, d, 4 * d), (tokens, 4 * d, d), (tokens, d, VOCAB)]


def mm_rate(m: int, k: int, n: int, reps: int = 2, block_gflop: float = 2.0) -> float:
    """GFLOP/s of torch.mm(m x k, k x n) in fp32: the best of `reps` blocks of back-to-back
    calls, each block ~block_gflop of work (tens of ms, like a training step, so the rate
    sees the same CPU contention a step does)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    flop = 2 * m * k * n
    inner = max(1, int(block_gflop * 1e9 // flop))
    best = float("inf")
    for _ in range(reps):
        t0 = CLOCK()
        for _ in range(inner):
            torch.mm(a, b)
        best = min(best, (CLOCK() - t0) / inner)
    return flop / best / 1e9


# ---- the run --------------------------------------------------------------------------------

def median(xs):
    return statistics.median(xs) if xs else float("nan")


def time_chunk(c: Contestant, start: int, n: int, keep: bool) -> None:
    """n steps of one contestant; the last one is a logging step if the contestant logs."""
    torch.set_num_threads(c.threads)
    plain, logged, wall = [], [], []
    for j in range(n):
        i = start + j
        log = c.logs and j == n - 1
        w0, t0 = time.perf_counter(), CLOCK()
        ce = c.step(i, log)
        dt, dw = CLOCK() - t0, time.perf_counter() - w0
        c.losses[i] = ce
        (logged if log else plain).append(dt)
        if not log:
            wall.append(dw)
    if keep:
        c.times.append(median(plain))
        c.wall_times.append(median(wall))
        c.log_times.extend(logged)
        c.all_plain.extend(plain)


PROTOTYPES = ("bf16", "threads2", "compile")
DEFAULT_PROTOTYPES = "bf16"


def run_scale(d, L, hd, args, tokens, extra: list[str]) -> dict:
    rounds, chunk = args.rounds, args.chunk
    cfg = make_cfg(d, L, hd, steps=max((rounds + 1) * chunk + 1, 300), lr=args.lr)
    torch.manual_seed(0)
    init_model = Transformer(cfg.model, VOCAB, cfg.train.seq_len)
    init = init_model.state_dict()
    th = args.threads
    torch.set_num_threads(th)
    val = [(x, y) for x, y in data_mod.val_batches(tokens, cfg.train.eval_batches, cfg.train.batch_size, cfg.train.seq_len)]
    init_loss = evaluate(init_model, val, cfg, torch.device("cpu"))  # train.py's step-0 evaluation (the detector's baseline)
    proj = project_contestant("project", cfg, tokens, init, th, init_loss)
    ref = reference_contestant(cfg, tokens, init, th, named_groups(proj.model, build_optimizer(proj.model, cfg.optim)))
    contestants = [proj, ref]
    if "bf16" in extra:
        contestants.append(project_contestant("proto_bf16_autocast", variant(cfg, precision="bf16"), tokens, init, th,
                                              init_loss, logs=False))
    if "threads2" in extra and th != 2:
        contestants.append(project_contestant("proto_2_threads", cfg, tokens, init, 2, init_loss, logs=False))
    if "compile" in extra:
        c = project_contestant("proto_compile", variant(cfg, compile=True), tokens, init, th, init_loss, logs=False)
        torch.set_num_threads(th)
        t0 = time.perf_counter()
        x, y = data_mod.train_batch(tokens, 0, cfg.train.batch_size, cfg.train.seq_len, cfg.seed)
        output_stats(c.forward(x)[0], y)["ce"].backward()  # compile fwd+bwd outside the timed rounds
        c.model.zero_grad(set_to_none=True)
        c.note = f"torch.compile(model): first fwd+bwd (compile) {time.perf_counter() - t0:.0f} s, not timed below"
        contestants.append(c)

    shapes = [(1024, 1024, 1024), (2048, 2048, 2048)] + gemm_shapes(d, cfg.train.batch_size * cfg.train.seq_len)
    mm_square, mm_model, evals = [], [], []
    for r in range(rounds + 1):  # round 0 is warm-up (allocator, MKL/oneDNN kernel selection)
        keep = r > 0
        order = contestants if r % 2 else contestants[::-1]  # alternate the order: no contestant always first
        for c in order:
            time_chunk(c, 1 + r * chunk, chunk, keep)
        torch.set_num_threads(th)
        rates = [mm_rate(*s) for s in shapes]
        t0 = CLOCK()
        evaluate(proj.model, val, cfg, torch.device("cpu"))
        ev = CLOCK() - t0
        if keep:
            mm_square.append(max(rates[:2]))
            mm_model.append(max(rates[2:]))
            evals.append(ev)

    # Loss trajectories: every step each contestant trained, from the same init and batches.
    common = sorted(set.intersection(*(set(c.losses) for c in contestants)))
    traj = {c.name: [float(c.losses[i]) for i in common] for c in contestants}
    long_check = None
    if args.check_steps > common[-1]:
        # Project and reference only, untimed, on through warm-up to the peak LR (the project
        # logs and probes every log_every steps, as train.py does).
        torch.set_num_threads(th)
        for i in range(common[-1] + 1, args.check_steps + 1):
            proj.losses[i] = proj.step(i, i % cfg.train.log_every == 0)
            ref.losses[i] = ref.step(i, False)
        steps = sorted(set(proj.losses) & set(ref.losses))
        a = np.array([float(proj.losses[i]) for i in steps])
        b = np.array([float(ref.losses[i]) for i in steps])
        long_check = {"steps": [steps[0], steps[-1]], "peak_lr": cfg.optim.lr, "warmup_steps": cfg.optim.warmup_steps,
                      "first_step_abs_diff": float(abs(a[0] - b[0])), "max_abs_diff": float(np.max(np.abs(a - b))),
                      "max_rel_diff": float(np.max(np.abs(a - b) / np.abs(a))),
                      "loss_first": float(a[0]), "loss_last_project": float(a[-1]), "loss_last_reference": float(b[-1])}

    tok = cfg.train.batch_size * cfg.train.seq_len
    fpt = proj.model.flops_per_token(cfg.train.seq_len)  # the project's convention (stability/sizes.py)
    fpt_palm = proj.model.flops_per_token(cfg.train.seq_len, "palm")  # PaLM / nanoGPT / llm.c's, for comparison
    t_plain = median(proj.times)
    peak = median([max(a, b) for a, b in zip(mm_square, mm_model)])
    peak_best = max(max(mm_square), max(mm_model))

    def traj_diff(name):
        a, b = np.array(traj["project"]), np.array(traj[name])
        return {"first_step_abs_diff": float(abs(a[0] - b[0])), "max_abs_diff": float(np.max(np.abs(a - b))),
                "last_abs_diff": float(abs(a[-1] - b[-1])), "last_project": float(a[-1]), "last_other": float(b[-1])}

    def overhead(c):
        return (median(c.log_times) - median(c.times)) / (cfg.train.log_every * median(c.times))

    out = {
        "d_model": d, "n_layers": L, "head_dim": hd, "batch_tokens": tok, "flops_per_token": fpt,
        "flops_per_token_palm": fpt_palm,
        "rounds": rounds, "steps_per_round": chunk,
        "step_s": {c.name: median(c.times) for c in contestants},
        "tokens_per_s": {c.name: tok / median(c.times) for c in contestants},
        "tokens_per_s_wall": {c.name: tok / median(c.wall_times) for c in contestants},
        "speedup_vs_project_wall": {c.name: median(proj.wall_times) / median(c.wall_times) for c in contestants},
        "speedup_vs_project": {c.name: t_plain / median(c.times) for c in contestants},
        "speedup_vs_project_per_round": {c.name: sorted(a / b for a, b in zip(proj.times, c.times)) for c in contestants},
        "notes": {c.name: c.note for c in contestants},
        "matmul_peak_gflops": peak,
        "matmul_square_gflops": median(mm_square),
        "matmul_model_shapes_gflops": median(mm_model),
        "matmul_best_gflops": peak_best,
        "achieved_gflops": fpt * tok / t_plain / 1e9,
        "mfu_best_step_vs_best_matmul": fpt * tok / min(proj.all_plain) / 1e9 / peak_best,
        "log_step_s": {c.name: median(c.log_times) for c in contestants if c.logs},
        "log_every": cfg.train.log_every,
        "monitoring_overhead": overhead(proj),
        "monitoring_overhead_by_contestant": {c.name: overhead(c) for c in contestants if c.logs},
        "eval_s": median(evals),
        "eval_overhead": median(evals) / (cfg.train.eval_every * t_plain),
        "loss_steps": [common[0], common[-1]],
        "loss_trajectories": traj,
        "loss_vs_project": {c.name: traj_diff(c.name) for c in contestants if c.name != "project"},
        "trajectory_check": long_check,
    }
    out["speedup_vs_reference"] = median(ref.times) / t_plain
    out["speedup_vs_reference_wall"] = median(ref.wall_times) / median(proj.wall_times)
    out["mfu_vs_matmul_peak"] = out["achieved_gflops"] / peak
    out["mfu_vs_matmul_peak_palm"] = out["mfu_vs_matmul_peak"] * fpt_palm / fpt
    out["mfu_by_contestant"] = {c.name: fpt * tok / median(c.times) / 1e9 / peak for c in contestants}
    if args.components:
        torch.set_num_threads(th)
        out["components"] = component_costs(d, L, hd, reps=5 if args.quick else 9)
    if args.profile:
        out["profile"] = profile_step(proj, 1 + (rounds + 1) * chunk, args.threads)
    return out


def component_costs(d: int, L: int, hd: int, reps: int) -> dict:
    """Cost per training step (ms on CLOCK, median of `reps`, measured interleaved) of the two
    places the project differs from the plain reference: CE + z-loss (1 call) and the
    attention core (L calls)."""
    torch.manual_seed(0)
    B, T, H = 16, 128, d // hd
    gx = torch.randn(B, H, T, hd)
    q, k, v = (torch.randn(B, H, T, hd, requires_grad=True) for _ in range(3))
    logits = torch.randn(B, T, VOCAB, requires_grad=True)
    y = torch.randint(0, VOCAB, (B, T))
    scale = 1 / math.sqrt(hd)
    mask = torch.ones(T, T, dtype=torch.bool).tril()

    def bw(t, g=None):
        t.backward(g)

    pairs = {  # name: (calls per step, project, reference)
        "ce_zloss": (1, lambda: bw((lambda st: st["ce"] + 1e-4 * st["z_loss"])(output_stats(logits, y))),
                     lambda: bw(F.cross_entropy(logits.view(-1, VOCAB), y.view(-1))
                                + 1e-4 * torch.logsumexp(logits, -1).pow(2).mean())),
        "attention_core": (L, lambda: bw(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale), gx),
                           lambda: bw((((q @ k.transpose(-2, -1)) * scale).masked_fill(~mask, float("-inf"))
                                       .softmax(-1) @ v), gx)),
    }
    times = {name: ([], []) for name in pairs}
    for r in range(reps + 1):
        for name, (_, a, b) in pairs.items():
            for f, acc in ((a, times[name][0]), (b, times[name][1])):
                t0 = CLOCK()
                f()
                if r:
                    acc.append(CLOCK() - t0)
        for t in (q, k, v, logits):
            t.grad = None
    out = {"vs_reference": {}}
    for name, (n, _, _) in pairs.items():
        a, b = median(times[name][0]) * n * 1e3, median(times[name][1]) * n * 1e3
        out["vs_reference"][name] = {"calls_per_step": n, "project_ms": a, "reference_ms": b, "project_saves_ms": b - a}
    return out


def profile_step(c: Contestant, start: int, threads: int, n: int = 4) -> str:
    from torch.profiler import ProfilerActivity, profile
    torch.set_num_threads(threads)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(start, start + n):
            c.step(i, False)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 rounds, no prototypes, no long trajectory check")
    p.add_argument("--scales", default=DEFAULT_SCALES, help="comma list of d_model x n_layers x head_dim (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the study's train_threads)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per scale after a warm-up round (default 6; 3 with --quick)")
    p.add_argument("--chunk", type=int, default=None, help="steps per contestant per round, the last a logging step (default 3)")
    p.add_argument("--lr", type=float, default=1e-2, help="peak LR of the runs (default %(default)s, warm-up 30 steps)")
    p.add_argument("--check-steps", type=int, default=None,
                   help="continue project and reference (untimed) to this step at the first scale and compare "
                        "their losses (default 100; 0 with --quick)")
    p.add_argument("--prototypes", default=None,
                   help=f"comma list from {','.join(PROTOTYPES)} (default: {DEFAULT_PROTOTYPES}; "
                        "--quick: none; '' for none). compile adds minutes of compilation.")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="what a step's time is: this process's CPU seconds (default; a step is not charged for "
                        "time the OS gave other processes, so a shared machine skews less) or wall-clock seconds. "
                        "Wall-clock tokens/s are reported beside either.")
    p.add_argument("--no-components", dest="components", action="store_false",
                   help="skip the per-hot-spot cost table (project against the reference)")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of the project step")
    p.add_argument("--json", type=Path, default=None, help="also write the full result JSON here")
    args = p.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    args.rounds = args.rounds or (3 if args.quick else 6)
    args.chunk = args.chunk or 3
    if args.check_steps is None:
        args.check_steps = 0 if args.quick else 100
    protos = args.prototypes if args.prototypes is not None else ("" if args.quick else DEFAULT_PROTOTYPES)
    protos = [s for s in protos.split(",") if s]
    unknown = sorted(set(protos) - set(PROTOTYPES))
    if unknown:
        p.error(f"--prototypes: unknown {', '.join(unknown)} (expected some of {', '.join(PROTOTYPES)})")

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    mach = machine("start")
    tokens = bench_tokens()

    results = {}
    for spec in args.scales.split(","):
        d, L, hd = (int(v) for v in spec.lower().split("x"))
        r = run_scale(d, L, hd, args, tokens, protos)
        args.check_steps = 0  # the long trajectory check runs at the first scale only
        results[f"d{d}_l{L}"] = r
        print(f"\n== d_model={d} n_layers={L} head_dim={hd}  ({r['flops_per_token'] / 1e6:.2f} MFLOP/token, "
              f"{r['batch_tokens']} tokens/step, {args.threads} thread(s), {r['rounds']} rounds x {r['steps_per_round']} steps, "
              f"times in {args.clock} seconds)")
        for name in r["step_s"]:
            per = r["speedup_vs_project_per_round"][name]
            print(f"  {name:20s} {r['step_s'][name] * 1e3:7.1f} ms/step {r['tokens_per_s'][name]:7.0f} tok/s "
                  f"x{r['speedup_vs_project'][name]:.2f} vs project (rounds {per[0]:.2f}..{per[-1]:.2f}) "
                  f"| wall {r['tokens_per_s_wall'][name]:6.0f} tok/s x{r['speedup_vs_project_wall'][name]:.2f} "
                  f"| mfu {r['mfu_by_contestant'][name]:.3f}  [{r['notes'][name]}]")
        print(f"  speedup project vs reference: {r['speedup_vs_reference']:.3f} ({args.clock} clock)"
              + (f", {r['speedup_vs_reference_wall']:.3f} (wall clock)" if args.clock == "cpu" else ""))
        print(f"  fp32 matmul GFLOP/s (median over rounds of best-of-2 ~2 GFLOP blocks): square {r['matmul_square_gflops']:.1f}, "
              f"model GEMM shapes {r['matmul_model_shapes_gflops']:.1f} -> peak {r['matmul_peak_gflops']:.1f} "
              f"(best block seen {r['matmul_best_gflops']:.1f})")
        print(f"  achieved {r['achieved_gflops']:.1f} GFLOP/s -> mfu_vs_matmul_peak {r['mfu_vs_matmul_peak']:.3f} "
              f"(best step vs best block: {r['mfu_best_step_vs_best_matmul']:.3f}); "
              f"PaLM convention (12 L T d): {r['mfu_vs_matmul_peak_palm']:.3f}")
        for name, ov in r["monitoring_overhead_by_contestant"].items():
            print(f"  monitoring {name:20s} log step {r['log_step_s'][name] * 1e3:7.1f} ms vs plain {r['step_s'][name] * 1e3:7.1f} ms"
                  f" -> overhead {ov:.4f} at log_every={r['log_every']}")
        print(f"  eval (4 val batches) {r['eval_s'] * 1e3:.0f} ms -> {r['eval_overhead']:.4f} at eval_every=100")
        for name, dd in r["loss_vs_project"].items():
            print(f"  loss vs project, steps {r['loss_steps'][0]}..{r['loss_steps'][1]}: {name:20s} step-1 |diff| "
                  f"{dd['first_step_abs_diff']:.1e}  max |diff| {dd['max_abs_diff']:.1e}  "
                  f"last {dd['last_project']:.4f} vs {dd['last_other']:.4f}")
        lc = r["trajectory_check"]
        if lc:
            print(f"  trajectory check project vs reference, steps {lc['steps'][0]}..{lc['steps'][1]} (warm-up "
                  f"{lc['warmup_steps']}, peak LR {lc['peak_lr']}): step-1 |diff| {lc['first_step_abs_diff']:.1e}, "
                  f"max |diff| {lc['max_abs_diff']:.1e} (relative {lc['max_rel_diff']:.1e}); loss {lc['loss_first']:.4f} -> "
                  f"{lc['loss_last_project']:.4f} vs {lc['loss_last_reference']:.4f}")
        if "components" in r:
            step_ms = r["step_s"]["project"] * 1e3
            comp = r["components"]
            print(f"  project against the reference per step ({args.clock} ms):")
            for name, cc in comp["vs_reference"].items():
                print(f"    {name:28s} x{cc['calls_per_step']:<2d} project {cc['project_ms']:7.2f}  reference {cc['reference_ms']:7.2f}"
                      f"  project saves {cc['project_saves_ms']:7.2f} ({cc['project_saves_ms'] / step_ms:+.1%})")
        if "profile" in r:
            print(r.pop("profile"))
        sys.stdout.flush()

    top = results[list(results)[-1]]
    summary = {
        "speedup_vs_reference": round(top["speedup_vs_reference"], 4),
        "mfu_vs_matmul_peak": round(top["mfu_vs_matmul_peak"], 4),
        "mfu_vs_matmul_peak_palm": round(top["mfu_vs_matmul_peak_palm"], 4),
        "monitoring_overhead": round(top["monitoring_overhead"], 5),
        "tokens_per_s": round(top["tokens_per_s"]["project"], 1),
        "reference_tokens_per_s": round(top["tokens_per_s"]["reference"], 1),
        "matmul_peak_gflops": round(top["matmul_peak_gflops"], 2),
        "threads": args.threads,
        "clock": "process_cpu" if args.clock == "cpu" else "wall",
        "tokens_per_s_wall": round(top["tokens_per_s_wall"]["project"], 1),
        "speedup_vs_reference_wall": round(top["speedup_vs_reference_wall"], 4),
        "torch": torch.__version__,
        "machine": mach,
        "scale": list(results)[-1],
        "quick": args.quick,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "trajectory_check": next((v["trajectory_check"] for v in results.values() if v["trajectory_check"]), None),
        "scales": {k: {kk: v[kk] for kk in ("speedup_vs_reference", "mfu_vs_matmul_peak", "mfu_vs_matmul_peak_palm", "monitoring_overhead",
                                              "tokens_per_s", "tokens_per_s_wall", "speedup_vs_project",
                                              "speedup_vs_project_wall", "mfu_by_contestant",
                                              "monitoring_overhead_by_contestant", "matmul_peak_gflops",
                                              "matmul_best_gflops", "achieved_gflops", "mfu_best_step_vs_best_matmul")}
                   for k, v in results.items()},
        "load_avg_end": round(os.getloadavg()[0], 1),
    }
    return emit(summary, args.json, {**summary, "detail": results})


if __name__ == "__main__":
    main()
