"""Train one run: config in, metrics.parquet + summary.json out. Divergence is a result.

    out/config.yaml        the resolved config (written once the model's loss at init is finite)
    out/metrics.parquet    one row every train.log_every steps (docs/metrics.md)
    out/summary.json       the outcome; its presence means the run is finished
    out/ckpt/step-*.pt     checkpoints; a rerun on the same out/ resumes from the newest
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import torch

from . import __version__, checkpoint, data as data_mod, interventions, kernel_max
from .config import ConfigError, RunConfig, diff_from_defaults, dump_yaml, flatten
from .io import file_lock, read_json, write_json, write_parquet, write_text
from .model import MAX_ONLY, Transformer
from .monitor import (GRAD_NORM, LOSS, MAX_ATTN_LOGIT, STEP, TOKENS_PER_S, VAL_LOSS, DivergenceDetector,
                      grad_stats, output_stats, signal_row, summarize, update_stats)
from .optim import build_optimizer, schedule, set_lr
from .warning.live import Warner


def resolve_device(cfg: RunConfig) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but torch sees no CUDA device")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def autocast_for(cfg: RunConfig, device: torch.device):
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Progress:
    """A tqdm bar on a terminal; plain periodic lines otherwise (Snakemake/SLURM logs)."""

    def __init__(self, total: int, start: int, quiet: bool):
        self.total, self.quiet, self.bar = total, quiet, None
        self.every = max(total // 10, 1)
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, row: dict | None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if row:
                self.bar.set_postfix(loss=f"{row[LOSS]:.3f}", max_logit=f"{row.get(MAX_ATTN_LOGIT) or float('nan'):.3g}")
        elif not self.quiet and row and (step % self.every == 0 or step == self.total):
            print(f"step {step}/{self.total} loss {row[LOSS]:.4f} max_attn_logit {row.get(MAX_ATTN_LOGIT)} "
                  f"tokens/s {row.get(TOKENS_PER_S, 0):.0f}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def evaluate(model, batches, cfg: RunConfig, device) -> float:
    """Mean cross-entropy (nats/token) over `batches`, a list of (x, y) int64 pairs of shape (B, T)."""
    model.eval()
    total = 0.0
    for x, y in batches:
        with autocast_for(cfg, device):
            logits, _ = model(x.to(device))
        total += float(output_stats(logits, y.to(device))["ce"])
    model.train()
    return total / len(batches)


def train_step(model, forward, optimizer, cfg: RunConfig, device, x, y, step: int, log_now: bool,
               probe_now: bool | str) -> tuple[torch.Tensor, dict | None]:
    """One optimizer step at `step` (1-based) on the batch x, y (B, T). Returns the detached
    cross-entropy and, when `log_now`, the step's metrics row (monitor.signal_row, its
    `tokens_per_s` and `val_loss` left for the loop); `probe_now` adds the exact attention
    probe (True) or the attention kernel's max logits (model.MAX_ONLY, `probe_mode`).
    benchmarks/throughput.py times exactly this function."""
    set_lr(optimizer, schedule(step, cfg.optim, cfg.train.steps))
    with autocast_for(cfg, device):
        logits, probes = forward(x.to(device, non_blocking=True), probe=probe_now)
    st = output_stats(logits, y.to(device, non_blocking=True))
    loss = objective(cfg, st)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = grad_stats(model) if log_now else None  # before clipping
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
    optimizer.step()
    for iv, c in interventions.on(cfg, "after_step"):  # seam: after_step
        iv.after_step(c, model)
    if not log_now:
        return st["ce"].detach(), None
    group = optimizer.param_groups[0]
    tokens = step * cfg.train.batch_size * cfg.train.seq_len
    return st["ce"].detach(), signal_row(step, tokens, group["lr"] / group["lr_mult"], st, probes, float(grad_norm),
                                         grads, update_stats(model, optimizer))


def probe_mode(cfg: RunConfig, step: int, log_now: bool, max_logit_source: str) -> bool | str:
    """What a step measures of the attention (train_step's `probe_now`): True (the fp32 probe)
    on logging steps at `train.probe_every`, MAX_ONLY on the other logging steps of a run
    whose max logits come from the kernel (`max_logit_source` "kernel", kernel_max.resolve),
    else False."""
    t = cfg.train
    if log_now and (t.probe_every == 0 or step % t.probe_every == 0):
        return True
    return MAX_ONLY if log_now and max_logit_source == "kernel" else False


def objective(cfg: RunConfig, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss: the cross-entropy of `stats` (monitor.output_stats) plus the terms
    of the interventions on (z-loss)."""
    loss = stats["ce"]
    for iv, c in interventions.active(cfg.loss, "loss"):  # seam: objective
        loss = iv.objective(c, loss, stats)
    return loss


def _write_metrics(out: Path, rows: list[dict]) -> None:
    df = pl.DataFrame(rows, infer_schema_length=None)
    write_parquet(out / "metrics.parquet", df)


def check_init_finite(cfg: RunConfig, row: dict, objective: float) -> None:
    """Raise ConfigError when the step-0 row (before any update) holds a non-finite loss,
    objective or attention logit: that NaN comes from the config's arithmetic (an overflow
    such as model.qk_kappa=1e38 or model.rope_base=1e-300), not from training, and must
    not be recorded as a divergence."""
    where, what = None, None
    if not math.isfinite(row[VAL_LOSS]) or not math.isfinite(row[LOSS]):
        where, what = "model", f"the cross-entropy is {row[LOSS]} (validation {row[VAL_LOSS]})"
    elif not math.isfinite(row.get(MAX_ATTN_LOGIT, 0.0)):
        where, what = "model", f"the max attention logit is {row[MAX_ATTN_LOGIT]}"
    elif not math.isfinite(objective):
        terms = {k: getattr(c, k.split(".", 1)[1]) for iv, c in interventions.active(cfg.loss, "loss") for k in iv.keys}
        where = ", ".join(terms) or "loss"
        added = "".join(f" + {k}={v}" for k, v in terms.items())
        what = f"the objective (cross-entropy{added}) is {objective}"
    if where:
        suspects = [f"{k}={v}" for k, v in diff_from_defaults(cfg).items() if k.startswith("model.") and isinstance(v, float)]
        hint = f" (model numbers off their defaults: {', '.join(suspects)})" if where == "model" and suspects else ""
        raise ConfigError(f"{where}: at initialisation, before any update, {what}: the config's arithmetic "
                          f"overflows or is undefined{hint}; not a training divergence, nothing was trained")


def train(cfg: RunConfig, out: str | Path, expect_run_id: str | None = None, quiet: bool = False) -> dict:
    """Train (or resume, or skip if finished) the run described by cfg into `out`.

    Raises ConfigError (nothing left in `out` when this call created it) for a config the
    CLI must refuse: another run in `out`, bad data, a non-finite loss at initialisation."""
    out = Path(out)
    run_id = cfg.run_id()
    if expect_run_id and expect_run_id != run_id:
        raise ConfigError(f"--expect-run-id: the config resolves to run {run_id}, not {expect_run_id} "
                          "(if the workflow passed it: the config or data files changed since it planned; plan again)")
    summary_path = out / "summary.json"
    if summary_path.is_file():
        try:
            summary = read_json(summary_path)
        except (OSError, ValueError) as e:  # edited or truncated by hand (we write it atomically)
            raise ConfigError(f"--out: {summary_path} is unreadable ({type(e).__name__}); delete it to train again") from None
        if summary.get("run_id") != run_id:
            raise ConfigError(f"--out: {out} holds finished run {summary.get('run_id')}, not {run_id}; choose another directory")
        if not quiet:
            print(f"{out}: run {run_id} already finished; left as it is", file=sys.stderr)
        return summary
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a directory")
    # Bad data (missing, empty, not UTF-8, too short) is reported before anything is written
    # to `out`: a typo in data.path must not leave a config.yaml that claims the directory.
    device = resolve_device(cfg)
    max_logit_source = kernel_max.resolve(cfg, device)  # ConfigError for 'kernel' where the kernel cannot
    tokens = data_mod.load(cfg)
    vocab = cfg.model.vocab_size or tokens.vocab_size
    if vocab < tokens.vocab_size:
        raise ConfigError(f"model.vocab_size: {vocab} is smaller than the dataset's vocabulary ({tokens.vocab_size})")
    torch.manual_seed(cfg.seed)  # the model is built before `out` exists: one too large for memory leaves nothing
    model = Transformer(cfg.model, vocab, cfg.train.seq_len).to(device)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent that is a file, no permission, read-only file system
        raise ConfigError(f"--out: cannot create {out} ({e.strerror})") from None
    # Two processes never train into the same directory at once.
    try:
        with file_lock(out / ".lock", blocking=False) as got:
            if not got:
                raise ConfigError(f"--out: {out} is being written by another process")
            return _train_locked(cfg, out, run_id, quiet, device, tokens, model, max_logit_source)
    except ConfigError:
        if created:  # refused before its first step: leave no directory behind (same --out works later)
            (out / ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _train_locked(cfg: RunConfig, out: Path, run_id: str, quiet: bool, device: torch.device,
                  tokens: data_mod.TokenData, model: Transformer, max_logit_source: str) -> dict:
    """train() once it holds out/.lock: resume or start, the loop, then the outputs.
    `max_logit_source` is kernel_max.resolve's answer for this run and device."""
    t = cfg.train
    _refuse_another_run(out, run_id)
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    optimizer = build_optimizer(model, cfg.optim)
    forward = torch.compile(model) if t.compile else model
    val = data_mod.val_batches(tokens, t.eval_batches, t.batch_size, t.seq_len)
    ckpt_dir = out / "ckpt"
    state = _latest_checkpoint(ckpt_dir, out, run_id)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, rows, init_loss, wall_before = state["step"], state["rows"], state["init_loss"], state["wall_time_s"]
    else:
        rows = [_step0_row(cfg, model, tokens, val, device)]
        start, init_loss, wall_before = 0, rows[0][VAL_LOSS], 0.0
    write_text(out / "config.yaml", dump_yaml(cfg))
    detector = DivergenceDetector(init_loss, t.divergence_margin, t.divergence_window)
    if state is not None:
        detector.load_state_dict(state["detector"])
    warner = Warner(cfg, rows)  # train.early_warning (stability/warning/live.py); inert when off

    progress = Progress(t.steps, start, quiet)
    tokens_per_step = t.batch_size * t.seq_len
    t0 = window_start = time.perf_counter()
    window_steps, step = 0, start
    for step in range(start + 1, t.steps + 1) if not (detector.diverged and t.stop_on_divergence) else ():
        x, y = data_mod.train_batch(tokens, step, t.batch_size, t.seq_len, cfg.seed)
        log_now = step % t.log_every == 0 or step == t.steps
        probe_now = probe_mode(cfg, step, log_now, max_logit_source)
        _, row = train_step(model, forward, optimizer, cfg, device, x, y, step, log_now, probe_now)
        window_steps += 1
        if row is not None:
            if device.type == "cuda":
                torch.cuda.synchronize()
            row[TOKENS_PER_S] = window_steps * tokens_per_step / max(time.perf_counter() - window_start, 1e-9)
            if step % t.eval_every == 0 or step == t.steps:
                row[VAL_LOSS] = evaluate(model, val, cfg, device)
            rows.append(row)
            detector.update(step, row[LOSS], row[GRAD_NORM])
            warner.step(rows)
            window_start, window_steps = time.perf_counter(), 0
        progress.update(step, row)
        stop = (detector.diverged and t.stop_on_divergence) or warner.stopped
        if step % t.checkpoint_every == 0 and not stop and step != t.steps:
            checkpoint.save(ckpt_dir, step, {"step": step, "run_id": run_id, "model": model.state_dict(),
                                             "optimizer": optimizer.state_dict(), "rows": rows, "init_loss": init_loss,
                                             "detector": detector.state_dict(),
                                             "wall_time_s": wall_before + time.perf_counter() - t0})
            _write_metrics(out, rows)
        if stop:
            break
    progress.close()
    wall = wall_before + time.perf_counter() - t0

    last = rows[-1]
    final_loss = last[VAL_LOSS] if last[STEP] == step and last[VAL_LOSS] is not None else evaluate(model, val, cfg, device)
    resumed_from = start if state is not None else None
    tokens_per_s = max(last[STEP] - (resumed_from or 0), 1) * tokens_per_step / max(time.perf_counter() - t0, 1e-9)
    summary = _summary(cfg, run_id, summarize(rows, cfg, detector, final_loss), model, device, tokens,
                       last[STEP], resumed_from, wall, tokens_per_s, warner.summary(), max_logit_source)
    _write_outputs(out, rows, summary)
    return summary


def _write_outputs(out: Path, rows: list[dict], summary: dict) -> None:
    """metrics.parquet, then summary.json (its presence means finished), then drop the checkpoints."""
    _write_metrics(out, rows)
    write_json(out / "summary.json", summary)
    for p in checkpoint.list_checkpoints(out / "ckpt"):  # a finished run needs no checkpoints
        p.unlink(missing_ok=True)
        p.with_suffix(".sha256").unlink(missing_ok=True)


def _refuse_another_run(out: Path, run_id: str) -> None:
    """ConfigError if out/config.yaml claims the directory for another run."""
    existing = out / "config.yaml"
    if not existing.is_file():
        return
    from .config import load as load_config
    try:
        old_id = load_config(existing).run_id()
    except ConfigError:
        old_id = None
    if old_id != run_id:
        raise ConfigError(f"--out: {out} holds run {old_id}, not {run_id}; choose another directory")


def _latest_checkpoint(ckpt_dir: Path, out: Path, run_id: str) -> dict | None:
    """The newest intact checkpoint of this run, or None; ConfigError if it is another run's."""
    with warnings.catch_warnings():  # reported once, as one line each, just below
        warnings.simplefilter("ignore")
        state, ckpt_warnings = checkpoint.load_latest(ckpt_dir)
    for msg in ckpt_warnings:
        print(f"warning: {msg}", file=sys.stderr)
    if state is not None and state.get("run_id", run_id) != run_id:
        # config.yaml cannot tell: the same config over an edited corpus is another run
        raise ConfigError(f"--out: {out} holds checkpoints of run {state['run_id']}, not {run_id} (the data files "
                          "changed since); choose another directory")
    return state


def _step0_row(cfg: RunConfig, model: Transformer, tokens: data_mod.TokenData, val, device) -> dict:
    """The metrics row before any update: the validation loss, then step 0's batch with a probe pass.
    Raises ConfigError (check_init_finite) when it is not finite."""
    init_loss = evaluate(model, val, cfg, device)
    x, y = data_mod.train_batch(tokens, 0, cfg.train.batch_size, cfg.train.seq_len, cfg.seed)
    with torch.no_grad(), autocast_for(cfg, device):
        logits, probes = model(x.to(device), probe=True)
    st = output_stats(logits, y.to(device))
    row = signal_row(0, 0, 0.0, st, probes, val_loss=init_loss)
    # the training objective as train_step computes it (in float32, where it can overflow)
    check_init_finite(cfg, row, float(objective(cfg, st)))
    return row


def _summary(cfg: RunConfig, run_id: str, signals: dict, model: Transformer, device: torch.device,
             tokens: data_mod.TokenData, steps_done: int, resumed_from: int | None, wall: float,
             tokens_per_s: float, warning: dict | None = None, max_logit_source: str = "probe") -> dict:
    """summary.json (docs/metrics.md): the run id, the signals (monitor.summarize), the early
    warning's keys when it is on (warning.live.SUMMARY_KEYS), then sizes, progress and where it
    ran, with where its max logits came from (kernel_max.resolve: "probe" or "kernel")."""
    return {
        "run_id": run_id,
        **signals,
        **(warning or {}),
        "params": model.n_params(),
        "non_embedding_params": model.n_non_embedding_params(),
        "flops_per_token": model.flops_per_token(cfg.train.seq_len),
        "steps_completed": steps_done,
        "steps_planned": cfg.train.steps,
        "stopped_early": steps_done < cfg.train.steps,
        "resumed_from_step": resumed_from,
        "wall_time_s": wall,
        "tokens_per_s": tokens_per_s,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "max_logit_source": max_logit_source,
        "entropy_floor": tokens.meta.get("entropy_floor"),
        "data_id": cfg.data_id(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "versions": {"stability": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "numpy": np.__version__, "polars": pl.__version__},
        "config": flatten(cfg.to_dict()),  # the resolved config, dotted keys: the aggregation reads only this file
    }
