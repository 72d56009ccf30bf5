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

from . import __version__, checkpoint, data as data_mod
from .config import ConfigError, RunConfig, diff_from_defaults, dump_yaml, flatten
from .io import atomic_write, file_lock, write_json, write_text
from .model import Transformer
from .monitor import DivergenceDetector, attention_columns, grad_stats, output_stats, update_stats
from .optim import build_optimizer, schedule, set_lr


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
                self.bar.set_postfix(loss=f"{row['loss']:.3f}", max_logit=f"{row.get('max_attn_logit') or float('nan'):.3g}")
        elif not self.quiet and row and (step % self.every == 0 or step == self.total):
            print(f"step {step}/{self.total} loss {row['loss']:.4f} max_attn_logit {row.get('max_attn_logit')} "
                  f"tokens/s {row.get('tokens_per_s', 0):.0f}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def evaluate(model, batches, cfg: RunConfig, device) -> float:
    model.eval()
    total = 0.0
    for x, y in batches:
        with autocast_for(cfg, device):
            logits, _ = model(x.to(device))
        total += float(output_stats(logits, y.to(device))["ce"])
    model.train()
    return total / len(batches)


def train_step(model, forward, optimizer, cfg: RunConfig, device, x, y, step: int, log_now: bool,
               probe_now: bool) -> tuple[torch.Tensor, dict | None]:
    """One optimizer step at `step` (1-based). Returns the detached cross-entropy and, when
    `log_now`, the step's signals (docs/metrics.md); `probe_now` adds the exact attention
    probe. benchmarks/throughput.py times exactly this function."""
    set_lr(optimizer, schedule(step, cfg.optim, cfg.train.steps))
    with autocast_for(cfg, device):
        logits, probes = forward(x.to(device, non_blocking=True), probe=probe_now)
    st = output_stats(logits, y.to(device, non_blocking=True))
    loss = st["ce"] + cfg.loss.z_loss * st["z_loss"] if cfg.loss.z_loss > 0 else st["ce"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gstats = grad_stats(model) if log_now else None  # before clipping
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
    optimizer.step()
    if not log_now:
        return st["ce"].detach(), None
    group = optimizer.param_groups[0]
    return st["ce"].detach(), {
        "lr": group["lr"] / group["lr_mult"], "loss": float(st["ce"].detach()), "z_loss": float(st["z_loss"].detach()),
        **(attention_columns(probes) if probes else {}),
        "logz_mean": float(st["logz_mean"]), "output_logit_mean": float(st["output_logit_mean"]),
        "grad_norm": float(grad_norm), **gstats, **update_stats(model, optimizer)}


def _finite_or_none(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _write_metrics(out: Path, rows: list[dict]) -> None:
    df = pl.DataFrame(rows, infer_schema_length=None)
    atomic_write(out / "metrics.parquet", lambda p: df.write_parquet(p))


def _probe_step_value(rows: list[dict], probe_step: int, key: str = "max_attn_logit"):
    """The value logged at the largest step <= probe_step (the last one if the run stopped earlier)."""
    candidates = [r for r in rows if r.get(key) is not None and r["step"] <= probe_step and r["step"] > 0]
    return candidates[-1][key] if candidates else None


def _sqrt_or_none(v):
    return math.sqrt(v) if v is not None and v >= 0 else None


def _window_mean(rows: list[dict], key: str, window_steps: int, last_step: int):
    vals = [r[key] for r in rows if r["step"] > last_step - window_steps and r.get(key) is not None
            and math.isfinite(r[key]) and r["step"] > 0]
    return float(np.mean(vals)) if vals else None


def check_init_finite(cfg: RunConfig, row: dict, objective: float) -> None:
    """Raise ConfigError when the step-0 row (before any update) holds a non-finite loss,
    objective or attention logit: that NaN comes from the config's arithmetic (an overflow
    such as model.qk_kappa=1e38 or model.rope_base=1e-300), not from training, and must
    not be recorded as a divergence."""
    where, what = None, None
    if not math.isfinite(row["val_loss"]) or not math.isfinite(row["loss"]):
        where, what = "model", f"the cross-entropy is {row['loss']} (validation {row['val_loss']})"
    elif not math.isfinite(row.get("max_attn_logit", 0.0)):
        where, what = "model", f"the max attention logit is {row['max_attn_logit']}"
    elif not math.isfinite(objective):
        where, what = "loss.z_loss", f"the objective cross-entropy + {cfg.loss.z_loss} x z-loss is {objective}"
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
        import json
        try:
            summary = json.loads(summary_path.read_text())
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
            return _train_locked(cfg, out, run_id, quiet, device, tokens, model)
    except ConfigError:
        if created:  # refused before its first step: leave no directory behind (same --out works later)
            (out / ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _train_locked(cfg: RunConfig, out: Path, run_id: str, quiet: bool, device: torch.device,
                  tokens: data_mod.TokenData, model: Transformer) -> dict:
    t = cfg.train
    existing = out / "config.yaml"
    if existing.is_file():
        from .config import load as load_config
        try:
            old_id = load_config(existing).run_id()
        except ConfigError:
            old_id = None
        if old_id != run_id:
            raise ConfigError(f"--out: {out} holds run {old_id}, not {run_id}; choose another directory")
    if t.threads > 0:
        torch.set_num_threads(t.threads)

    optimizer = build_optimizer(model, cfg.optim)
    forward = torch.compile(model) if t.compile else model
    val = [(x, y) for x, y in data_mod.val_batches(tokens, t.eval_batches, t.batch_size, t.seq_len)]

    ckpt_dir = out / "ckpt"
    with warnings.catch_warnings():  # reported once, as one line each, just below
        warnings.simplefilter("ignore")
        state, ckpt_warnings = checkpoint.load_latest(ckpt_dir)
    for msg in ckpt_warnings:
        print(f"warning: {msg}", file=sys.stderr)
    if state is not None and state.get("run_id", run_id) != run_id:
        # config.yaml cannot tell: the same config over an edited corpus is another run
        raise ConfigError(f"--out: {out} holds checkpoints of run {state['run_id']}, not {run_id} (the data files "
                          "changed since); choose another directory")
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, rows, init_loss = state["step"], state["rows"], state["init_loss"]
        wall_before = state["wall_time_s"]
        resumed_from = start
    else:
        start, rows, wall_before, resumed_from = 0, [], 0.0, None
        init_loss = evaluate(model, val, cfg, device)
        x, y = data_mod.train_batch(tokens, 0, t.batch_size, t.seq_len, cfg.seed)
        with torch.no_grad(), autocast_for(cfg, device):
            logits, probes = model(x.to(device), probe=True)
        st = output_stats(logits, y.to(device))
        rows.append({"step": 0, "tokens": 0, "lr": 0.0, "loss": float(st["ce"]), "z_loss": float(st["z_loss"]),
                     **attention_columns(probes), "logz_mean": float(st["logz_mean"]),
                     "output_logit_mean": float(st["output_logit_mean"]), "val_loss": init_loss})
        # the training objective as train_step computes it (in float32, where it can overflow)
        check_init_finite(cfg, rows[0], float(st["ce"] + cfg.loss.z_loss * st["z_loss"]))
    write_text(existing, dump_yaml(cfg))
    detector = DivergenceDetector(init_loss, t.divergence_margin, t.divergence_window)
    if state is not None:
        detector.load_state_dict(state["detector"])

    def save_checkpoint(step: int, wall: float) -> None:
        checkpoint.save(ckpt_dir, step, {"step": step, "run_id": run_id, "model": model.state_dict(),
                                         "optimizer": optimizer.state_dict(), "rows": rows, "init_loss": init_loss,
                                         "detector": detector.state_dict(), "wall_time_s": wall})
        _write_metrics(out, rows)

    progress = Progress(t.steps, start, quiet)
    tokens_per_step = t.batch_size * t.seq_len
    t0 = time.perf_counter()
    window_start, window_steps = time.perf_counter(), 0
    step = start
    for step in range(start + 1, t.steps + 1) if not detector.diverged else ():
        x, y = data_mod.train_batch(tokens, step, t.batch_size, t.seq_len, cfg.seed)
        log_now = step % t.log_every == 0 or step == t.steps
        probe_now = log_now and (t.probe_every == 0 or step % t.probe_every == 0)
        _, signals = train_step(model, forward, optimizer, cfg, device, x, y, step, log_now, probe_now)
        window_steps += 1
        row = None
        if log_now:
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - window_start
            row = {"step": step, "tokens": step * tokens_per_step, **signals,
                   "val_loss": None, "tokens_per_s": window_steps * tokens_per_step / max(elapsed, 1e-9)}
            if step % t.eval_every == 0 or step == t.steps:
                row["val_loss"] = evaluate(model, val, cfg, device)
            rows.append(row)
            detector.update(step, row["loss"], row["grad_norm"])
            window_start, window_steps = time.perf_counter(), 0
        progress.update(step, row)
        stop = detector.diverged and t.stop_on_divergence
        if step % t.checkpoint_every == 0 and not stop and step != t.steps:
            save_checkpoint(step, wall_before + time.perf_counter() - t0)
        if stop:
            break
    progress.close()
    wall = wall_before + time.perf_counter() - t0

    final_loss = rows[-1].get("val_loss") if rows[-1]["step"] == step and rows[-1].get("val_loss") is not None else None
    if final_loss is None:
        final_loss = evaluate(model, val, cfg, device)
    steps_done = rows[-1]["step"]
    window = t.grad_stats_window or max(steps_done // 5, t.log_every)
    logged = [r for r in rows if r["step"] > 0]
    attn = [r["max_attn_logit"] for r in rows if r.get("max_attn_logit") is not None and math.isfinite(r["max_attn_logit"])]
    trained_steps = max(steps_done - (resumed_from or 0), 1)
    summary = {
        "run_id": run_id,
        "init_loss": init_loss,
        "final_loss": _finite_or_none(final_loss),
        "final_train_loss": _finite_or_none(logged[-1]["loss"]) if logged else None,
        "diverged": detector.diverged,
        "diverged_step": detector.step,
        "diverged_reason": detector.reason,
        "max_attn_logit": max(attn) if attn else None,
        "probe_step": t.probe_step,
        "max_attn_logit_at_probe": _finite_or_none(_probe_step_value(rows, t.probe_step)),
        "grad_rms_final": _window_mean(rows, "grad_rms_mlp0", window, steps_done),
        "update_rms_final": _window_mean(rows, "update_rms_mlp0", window, steps_done),
        "grad_rms_all_final": _window_mean(rows, "grad_rms", window, steps_done),
        "logz_final": _window_mean(rows, "logz_mean", window, steps_done),
        # RMS over tokens of log Z (sqrt of the unscaled z-loss): the per-token drift of
        # finding 2, which a mean over tokens can hide when log Z spreads both ways.
        "logz_rms_final": _sqrt_or_none(_window_mean(rows, "z_loss", window, steps_done)),
        # the mean output logit, the quantity the paper's Fig. 4 plots for finding 2
        "output_logit_mean_final": _window_mean(rows, "output_logit_mean", window, steps_done),
        "params": model.n_params(),
        "non_embedding_params": model.n_non_embedding_params(),
        "flops_per_token": model.flops_per_token(t.seq_len),
        "steps_completed": steps_done,
        "steps_planned": t.steps,
        "stopped_early": steps_done < t.steps,
        "resumed_from_step": resumed_from,
        "wall_time_s": wall,
        "tokens_per_s": trained_steps * tokens_per_step / max(time.perf_counter() - t0, 1e-9),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "entropy_floor": tokens.meta.get("entropy_floor"),
        "data_id": cfg.data_id(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "versions": {"stability": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "numpy": np.__version__, "polars": pl.__version__},
        "config": flatten(cfg.to_dict()),  # the resolved config, dotted keys: the aggregation reads only this file
    }
    _write_metrics(out, rows)
    write_json(out / "summary.json", summary)  # written last: its presence means finished
    for p in checkpoint.list_checkpoints(ckpt_dir):  # a finished run needs no checkpoints
        p.unlink(missing_ok=True)
        p.with_suffix(".sha256").unlink(missing_ok=True)
    return summary
