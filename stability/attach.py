"""Attach the instability monitor to any PyTorch training loop (docs/monitor.md).

    monitor = Monitor(model, optimizer, "runs/d64", data="my-corpus")
    for step in range(1, steps + 1):
        with monitor.step(step):          # every `every` steps: watch this step
            loss = model(x, labels=y).loss
            loss.backward()
            optimizer.step(); optimizer.zero_grad()
    monitor.close()                        # metrics.parquet, run_card.json, summary.json

On a logging step the monitor records the signals the project's own runs record, under
the same column names (docs/metrics.md), built by the same functions (monitor.signal_row,
monitor.output_stats, monitor.attention_columns through signal_row, optim.adam_update):

* attention: every `torch.nn.functional.scaled_dot_product_attention` call is seen
  through a `TorchFunctionMode` (after RoPE and any q/k norm: what the kernel gets), and
  its logits q k^T * scale (+ the additive mask, with the causal and boolean masks) are
  recomputed in fp32 beside it, so `attn_logit_l{i}` is exact, as the softmax sees it.
  Attention written by hand gets one line: `scores = observe_attention_logits(scores)`
  just before its softmax (or `observe_qk(q, k, ...)` beside a custom kernel).
* the output: every `F.cross_entropy` call with integer targets (Hugging Face models'
  losses go through it), or `monitor.observe_output(logits, targets)`: loss, z-loss,
  log Z mean and RMS, the mean output logit.
* gradients before any clipping (post-accumulate-grad hooks, so gradient accumulation is
  summed), the Adam update m_hat / (sqrt(v_hat) + eps) after the optimizer step, and
  parameter RMS, overall and per parameter group (`DEFAULT_GROUPS`, name patterns).

Between logging steps nothing is hooked: the loop runs as it would without the monitor.
"""
from __future__ import annotations

import contextlib
import math
import re
import time
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import __version__
from .io import read_json, write_json, write_parquet
from .model import AttnProbe, rms
from .monitor import (GRAD_NORM, GRAD_RMS, LOGZ_MEAN, LOSS, OUTPUT_LOGIT_MEAN, STEP, TOKENS_PER_S,
                      UPDATE_RMS, VAL_LOSS, Z_LOSS, DivergenceDetector, output_stats, signal_row,
                      summarize)
from .optim import adam_update

METRICS, RUN_CARD, SUMMARY = "metrics.parquet", "run_card.json", "summary.json"
CARD_FORMAT = "stability-monitor/1"
DEFAULT_EVERY = 20  # steps between logging steps: about 4% on a 5 ms CPU step (benchmarks/monitor_overhead.py)
LOGZ_RMS = "logz_rms"  # sqrt(z_loss): the RMS over tokens of log Z (a monitor-only column)
PARAM_RMS = "param_rms"
_CHUNK = 1 << 24  # fp32 logits recomputed at once (64 MiB); larger attentions go in chunks

_ATTN = r"(?:attn|attention|self_attn|self_attention)"
_MLP = r"(?:mlp|ffn|feed_forward|feedforward)"
# Parameter groups by name (re.search over named_parameters() names; matrices only): each
# gives grad_rms_<tag>, update_rms_<tag> and param_rms_<tag>. `mlp0` and `k0` are the paper's
# probes as the project names them: block 0's first MLP matrix (the epsilon probe; gate and up
# projections both, in a gated MLP) and its key projection (none in a fused qkv matrix such
# as GPT-2's c_attn: its columns are NaN).
DEFAULT_GROUPS: dict[str, str] = {
    "attn": rf"(?:^|\.){_ATTN}\.(?:.+\.)?weight$",
    "mlp": rf"(?:^|\.){_MLP}\.(?:.+\.)?weight$",
    "mlp0": rf"(?:^|\.)0\.{_MLP}\.(?:fc1|c_fc|up_proj|gate_proj|w1|w3|fc_in|dense_h_to_4h|lin1|linear1)\.weight$",
    "k0": rf"(?:^|\.)0\.{_ATTN}\.(?:k_proj|key|wk|to_k|k)\.weight$",
}

_ACTIVE: list["Monitor"] = []  # monitors inside a logging step, innermost last


# ---- exact attention logits --------------------------------------------------------------

def _as_bhls(x: torch.Tensor) -> torch.Tensor:
    """(..., H, L, E) -> (N, H, L, E); (L, E) -> (1, 1, L, E)."""
    if x.ndim == 2:
        return x.reshape(1, 1, *x.shape)
    return x.reshape(-1, *x.shape[-3:])


@torch.no_grad()
def attention_stats(q: torch.Tensor, k: torch.Tensor, scale: float | None = None,
                    attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                    enable_gqa: bool = False) -> AttnProbe:
    """Exact fp32 statistics of the logits softmax(q k^T * scale + mask) normalises.

    Arguments as `F.scaled_dot_product_attention`: q (..., Hq, L, E), k (..., Hk, S, E) with
    Hq a multiple of Hk (grouped-query attention: each key head serves Hq / Hk query heads),
    `scale` (default 1/sqrt(E)), `attn_mask` broadcastable to (..., Hq, L, S): boolean (True
    takes part) or additive float (added to the logits; values at or below half the dtype's
    minimum, as Hugging Face's masks use, count as masked), `is_causal` (query i sees keys
    j <= i, aligned top-left as torch does). Computed under no_grad with autocast off, in
    chunks of at most 2**24 logits, without a host sync.

    Returns AttnProbe of 0-d fp32 tensors: `max_logit` over every unmasked (batch, head,
    i, j); `entropy`, the mean over query rows with at least one unmasked key of
    -sum_j p_ij log p_ij (nats); `q_rms`, `k_rms`, the mean over rows of the RMS over E.
    Raises ValueError for shapes that do not pair up.
    """
    if q.ndim < 2 or k.ndim != q.ndim or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention_stats: q {tuple(q.shape)} and k {tuple(k.shape)} must be (..., H, L, E) "
                         "and (..., H, S, E) with the same E")
    L, E, S = q.shape[-2], q.shape[-1], k.shape[-2]
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    q4, k4 = _as_bhls(q.detach()), _as_bhls(k.detach())
    H = q4.shape[1]
    if k4.shape[1] != H:
        if H % k4.shape[1]:
            raise ValueError(f"attention_stats: {H} query heads are not a multiple of {k4.shape[1]} key heads")
        k4 = k4.repeat_interleave(H // k4.shape[1], dim=1)
    if k4.shape[0] != q4.shape[0]:
        k4 = k4.expand(q4.shape[0], *k4.shape[1:])
    m = None
    if attn_mask is not None:
        m = attn_mask.detach()
        if q.ndim > 4:  # rare: flatten the leading dims of the mask as those of q
            m = m.broadcast_to((*q.shape[:-1], S)).reshape(-1, H, L, S)
        while m.ndim < 4:
            m = m.unsqueeze(0)
    B = q4.shape[0]
    hc = max(1, min(H, _CHUNK // max(L * S, 1)))
    bc = max(1, _CHUNK // max(H * L * S, 1)) if hc == H else 1
    causal = torch.ones(L, S, dtype=torch.bool, device=q.device).tril() if is_causal else None
    best = torch.full((), float("-inf"), device=q.device)
    ent_sum = torch.zeros((), device=q.device)
    rows = torch.zeros((), device=q.device)
    with torch.autocast(device_type=q.device.type, enabled=False):
        for b0 in range(0, B, bc):
            for h0 in range(0, H, hc):
                bs, hs = slice(b0, b0 + bc), slice(h0, h0 + hc)
                z = (q4[bs, hs].float() @ k4[bs, hs].float().transpose(-2, -1)).mul_(scale)
                if m is not None:
                    mc = m[bs if m.shape[0] > 1 else slice(None), hs if m.shape[1] > 1 else slice(None)]
                    if mc.dtype == torch.bool:
                        z.masked_fill_(~mc, float("-inf"))
                    else:
                        z.add_(mc.float())
                        z.masked_fill_(mc <= torch.finfo(mc.dtype).min / 2, float("-inf"))
                if causal is not None:
                    z.masked_fill_(~causal, float("-inf"))
                best = torch.maximum(best, z.amax())
                valid = z.amax(-1) > float("-inf")
                ent = torch.special.entr(z.softmax(-1)).sum(-1)
                ent_sum += ent.masked_fill(~valid, 0.0).sum()
                rows += valid.sum()
    return AttnProbe(max_logit=best, entropy=ent_sum / rows, q_rms=rms(q).mean(), k_rms=rms(k).mean())


def _in_backward() -> bool:
    """Inside autograd's backward (activation-checkpointing recomputes the forward there)."""
    return torch._C._current_autograd_node() is not None


def observe_attention_logits(scores: torch.Tensor) -> torch.Tensor:
    """The one-line hook for attention written by hand: call it on the logits the softmax
    is about to normalise, masks applied (-inf where masked), and use what it returns:

        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = observe_attention_logits(att)          # <- the line
        att = F.softmax(att, dim=-1)

    scores: (..., L, S), any float dtype. Returns `scores` itself (same object; nothing is
    copied or changed). Inside a monitored logging step it records one attention layer (max
    logit, entropy; q/k RMS are NaN since q and k are not seen); elsewhere it does nothing."""
    if _ACTIVE and not _in_backward():
        _ACTIVE[-1]._observe_scores(scores)
    return scores


def observe_qk(q: torch.Tensor, k: torch.Tensor, *, scale: float | None = None, is_causal: bool = False,
               attn_mask: torch.Tensor | None = None) -> None:
    """Record one attention layer from its q (..., Hq, L, E) and k (..., Hk, S, E), for
    attention computed by a kernel the monitor does not see (FlashAttention, xFormers):
    arguments as `attention_stats`. Does nothing outside a monitored logging step."""
    if _ACTIVE and not _in_backward():
        _ACTIVE[-1]._observe_probe(attention_stats(q, k, scale, attn_mask, is_causal, enable_gqa=True))


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class _Watch(TorchFunctionMode):
    """Sees every torch function call of a logging step; acts on attention and cross-entropy."""

    def __init__(self, monitor: "Monitor"):
        super().__init__()
        self.monitor = monitor

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and not _in_backward():
            a = {**dict(zip(_SDPA_ARGS, args)), **kwargs}
            self.monitor._observe_probe(attention_stats(
                a["query"], a["key"], a.get("scale"), a.get("attn_mask"), bool(a.get("is_causal", False)),
                bool(a.get("enable_gqa", False))))
        elif func is F.cross_entropy and self.monitor.capture_cross_entropy and not _in_backward():
            a = {**dict(zip(("input", "target", "weight", "size_average", "ignore_index"), args)), **kwargs}
            self.monitor._observe_cross_entropy(a["input"], a["target"], a.get("ignore_index", -100))
        return func(*args, **kwargs)


# ---- sizes and groups --------------------------------------------------------------------

def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, non-embedding parameters) of `model`, each shared tensor counted once.

    Non-embedding (the paper's size axis) leaves out every `nn.Embedding` (token and learned
    position embeddings) and every `nn.Linear` whose output width equals an embedding's
    number of rows (the output head; a head tied to the embedding is the same tensor)."""
    total = sum(p.numel() for p in model.parameters())
    emb = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    vocab = {m.num_embeddings for m in emb}
    skip = {id(p) for m in emb for p in m.parameters()}
    skip |= {id(p) for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features in vocab
             for p in m.parameters()}
    return total, sum(p.numel() for p in model.parameters() if id(p) not in skip)


def resolve_groups(model: torch.nn.Module, groups: Mapping[str, str] | None) -> dict[str, list[str]]:
    """tag -> names of the matrices (>= 2-D parameters) whose name matches the tag's regex
    (re.search). `groups` None takes DEFAULT_GROUPS, where a group may match nothing (its
    columns are then NaN). Raises ValueError for a tag that is not a plain identifier, a
    pattern that is not a valid regex, or a user group that matches no matrix."""
    named = [(n, p) for n, p in model.named_parameters() if p.ndim >= 2]
    out = {}
    for tag, pattern in (DEFAULT_GROUPS if groups is None else groups).items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", tag):
            raise ValueError(f"groups: tag {tag!r} must be letters, digits or _ (it names columns)")
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"groups[{tag!r}]: {pattern!r} is not a regex ({e})") from None
        out[tag] = [n for n, _ in named if rx.search(n)]
        if groups is not None and not out[tag]:
            raise ValueError(f"groups[{tag!r}]: {pattern!r} matches no matrix of the model "
                             f"(e.g. {', '.join(n for n, _ in named[:3])})")
    return out


def _unwrap(optimizer):
    """The torch optimizer inside wrappers (accelerate's AcceleratedOptimizer, Lightning's)."""
    for _ in range(10):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    return optimizer


def _sq_norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Squared L2 norms (0-d fp32 tensors) of `tensors`, one foreach kernel per dtype group."""
    if not tensors:
        return []
    ts = [t.detach() if t.dtype == torch.float32 else t.detach().float() for t in tensors]
    return [n.square() for n in torch._foreach_norm(ts)]


def _sqrt(x: float) -> float:
    return math.sqrt(x) if x >= 0 else float("nan")


def _rms(sq: list[torch.Tensor], n: int) -> float:
    return _sqrt(float(torch.stack(sq).sum())) / math.sqrt(n) if n else float("nan")


# ---- the monitor ---------------------------------------------------------------------------

class Monitor:
    """The instability monitor of one training run, writing into the folder `out`.

    model: the module trained (its parameters name the groups; its forward passes number the
    attention layers). optimizer: for the update RMS (Adam-family: the state holds exp_avg
    and exp_avg_sq; other optimizers give NaN) and, unless `peak_lr` is given, the peak LR
    (the largest `initial_lr`, else `lr`, over its param groups); None leaves both unknown.
    every: steps between logging steps (the first step seen is logged too: its loss is the
    loss at initialisation). data: the data set's name (analyse-runs refuses to mix data).
    peak_lr, params, non_embedding_params, name, variant, seed: the run card; sizes default
    to `count_params`. groups: tag -> regex over parameter names (DEFAULT_GROUPS).
    tokens_per_step: training tokens per optimizer step (default: the targets the step's
    cross-entropy saw). grad_scaler: a torch.amp.GradScaler whose scale divides the
    gradients read. capture_cross_entropy: read the output from F.cross_entropy calls.
    probe_step: the step summary.json reads the max logit at (default: the last).
    overwrite / resume: what to do when `out` already holds a monitored run (default:
    FileExistsError); resume keeps its rows before the first step now logged.
    tensorboard: also write TensorBoard event files into out/tb (needs `tensorboard`).
    wandb: a wandb run (or True: `wandb.init(dir=out)`), logged to at every logging step.
    flush_secs: metrics.parquet is rewritten at most this often (and at close).

    Raises ValueError for bad groups or `every` < 1, FileExistsError as above.
    """

    def __init__(self, model: torch.nn.Module, optimizer: Any = None, out: str | Path = "monitor", *,
                 every: int = DEFAULT_EVERY, data: str = "unnamed", peak_lr: float | None = None,
                 params: int | None = None, non_embedding_params: int | None = None, name: str | None = None,
                 variant: str = "default", seed: int | None = None, groups: Mapping[str, str] | None = None,
                 tokens_per_step: int | None = None, grad_scaler: Any = None, capture_cross_entropy: bool = True,
                 probe_step: int | None = None, overwrite: bool = False, resume: bool = False,
                 tensorboard: bool = False, wandb: Any = None, flush_secs: float = 30.0):
        if int(every) < 1:
            raise ValueError(f"every: {every} must be >= 1")
        self.model, self.every, self.out = model, int(every), Path(out)
        self.optimizer = _unwrap(optimizer)
        self.capture_cross_entropy = capture_cross_entropy
        self.tokens_per_step, self.grad_scaler, self.probe_step = tokens_per_step, grad_scaler, probe_step
        self.flush_secs = flush_secs
        self.groups = resolve_groups(model, groups)
        self._params = dict(model.named_parameters())
        total, non_emb = count_params(model)
        self.card = {
            "format": CARD_FORMAT, "name": name or self.out.name, "data": str(data),
            "peak_lr": float(peak_lr) if peak_lr is not None else self._peak_lr(),
            "params": int(params if params is not None else total),
            "non_embedding_params": int(non_embedding_params if non_embedding_params is not None else non_emb),
            "variant": str(variant), "seed": seed, "every": self.every, "model_class": type(model).__name__,
            "groups": {t: {"pattern": (DEFAULT_GROUPS if groups is None else groups)[t], "matched": n}
                       for t, n in self.groups.items()},
            "versions": {"stability": __version__, "torch": torch.__version__},
        }
        self.rows: list[dict] = self._start(overwrite, resume)
        write_json(self.out / RUN_CARD, self.card)
        self._step = self.rows[-1][STEP] if self.rows else 0
        self._first: int | None = None
        self._open = False
        self._closed = False
        self._last_flush = time.perf_counter()
        self._last_log: tuple[float, int] | None = None  # (time, step) of the last logged step
        self._pending_val: float | None = None
        self._tb = self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package
            self._tb = SummaryWriter(str(self.out / "tb"))
        self._own_wandb = wandb is True
        if wandb is True:
            import wandb as wandb_mod
            self._wandb = wandb_mod.init(dir=str(self.out), name=self.card["name"], config=self.card)
        elif wandb is not None:
            self._wandb = wandb
        self._detector: DivergenceDetector | None = None
        # at interpreter exit an unclosed monitor still writes its rows (never at garbage collection)
        self._finalizer = weakref.finalize(self, Monitor._flush_at_exit, weakref.ref(self))

    @staticmethod
    def _flush_at_exit(ref) -> None:
        mon = ref()
        if mon is not None and not mon._closed:
            with contextlib.suppress(Exception):
                mon.flush()

    def _peak_lr(self) -> float | None:
        if self.optimizer is None:
            return None
        lrs = [g.get("initial_lr", g.get("lr")) for g in self.optimizer.param_groups]
        lrs = [float(x) for x in lrs if isinstance(x, (int, float)) or torch.is_tensor(x)]
        return max(lrs) if lrs else None

    def _start(self, overwrite: bool, resume: bool) -> list[dict]:
        metrics = self.out / METRICS
        if self.out.exists() and not self.out.is_dir():
            raise FileExistsError(f"{self.out}: exists and is not a folder")
        held = metrics.exists() or (self.out / RUN_CARD).exists()
        if not held or overwrite:
            for f in (METRICS, SUMMARY):
                (self.out / f).unlink(missing_ok=True)
            return []
        if not resume:
            raise FileExistsError(f"{self.out}: holds a monitored run already; pass overwrite=True to replace it "
                                  "or resume=True to continue it")
        import polars as pl
        return pl.read_parquet(metrics).to_dicts() if metrics.exists() else []

    # ---- the loop's side ------------------------------------------------------------------

    def logging(self, step: int) -> bool:
        """Whether `step` (1-based) is a logging step: a multiple of `every`, or the first seen."""
        return step % self.every == 0 or self._first is None or step == self._first

    @contextlib.contextmanager
    def step(self, step: int | None = None) -> Iterator[bool]:
        """Wrap one optimizer step (forward, backward, optimizer.step); yields whether it logs.
        step: the 1-based step number (default: one more than the last). On an exception
        the step's partial record is dropped and the exception propagates."""
        logging = self.begin_step(step)
        try:
            yield logging
        except BaseException:
            self._end_window()
            raise
        self.end_step()

    def begin_step(self, step: int | None = None) -> bool:
        """Start step `step` (default: the next); returns whether it is a logging step. On a
        logging step the monitor watches attention, the output and the gradients until
        end_step (which must follow, in the same thread). Raises RuntimeError when a step
        is already open or the monitor is closed."""
        if self._closed:
            raise RuntimeError("Monitor.begin_step: the monitor is closed")
        if self._open:
            raise RuntimeError("Monitor.begin_step: the previous step was not ended (end_step)")
        self._step = int(step) if step is not None else self._step + 1
        if self._first is None:
            self._first = self._step
            if self.rows and self.rows[-1][STEP] >= self._step:  # resumed: drop what is redone
                self.rows = [r for r in self.rows if r[STEP] < self._step]
        self._open = True
        self._logging = self.logging(self._step)
        if not self._logging:
            return False
        self._layers: list[list[AttnProbe]] = []
        self._layer = 0
        self._outs: list[tuple[dict, int]] = []
        self._explicit_out = False
        self._gsq: dict[int, torch.Tensor] = {}
        self._lr = self._current_lr()
        self._scale = float(self.grad_scaler.get_scale()) if self.grad_scaler is not None else 1.0
        self._handles = [self.model.register_forward_pre_hook(self._new_forward)]
        for n, p in self._params.items():
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(self._grad_hook))
        if hasattr(self.optimizer, "register_step_pre_hook"):
            # the optimizer step needs no watching: leave the mode before it (it would slow every
            # op), unless it gets a closure (Lightning runs forward and backward in one, inside
            # optimizer.step)
            self._handles.append(self.optimizer.register_step_pre_hook(self._before_optimizer_step))
        self._mode = _Watch(self)
        self._mode.__enter__()
        self._mode_on = True
        _ACTIVE.append(self)
        return True

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        # args may hold the optimizer itself (step is a method) before a positional closure
        closure = kwargs.get("closure") or next((a for a in args if callable(a) and a is not optimizer), None)
        if closure is None:
            self._leave_mode()

    def _leave_mode(self) -> None:
        """Exit the TorchFunctionMode if it is the innermost one (modes leave in LIFO order)."""
        if self._mode_on and torch.overrides._get_current_function_mode() is self._mode:
            self._mode.__exit__(None, None, None)
            self._mode_on = False

    def end_step(self) -> dict | None:
        """End the open step; on a logging step build its metrics row (docs/monitor.md) and
        return it (None otherwise). Raises RuntimeError without an open step."""
        if not self._open:
            raise RuntimeError("Monitor.end_step: no open step (begin_step)")
        if not self._logging:
            self._open = False
            return None
        self._end_window()
        row = self._row()
        self.rows.append(row)
        self._emit(row)
        if time.perf_counter() - self._last_flush > self.flush_secs:
            self.flush()
        return row

    def _end_window(self) -> None:
        if not self._open:
            return
        self._open = False
        if not self._logging:
            return
        if _ACTIVE and _ACTIVE[-1] is self:
            _ACTIVE.pop()
        if self._mode_on:
            self._mode.__exit__(None, None, None)
            self._mode_on = False
        for h in self._handles:
            h.remove()
        self._handles = []

    def observe_output(self, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> None:
        """The step's output logits (..., V) and integer targets (...), for a loss the monitor
        does not see (e.g. not F.cross_entropy); it replaces what cross-entropy calls gave in
        this step and pools over several calls (micro-batches). Positions whose target is
        `ignore_index` are left out. Does nothing off logging steps."""
        if not (self._open and self._logging):
            return
        if not self._explicit_out:
            self._outs, self._explicit_out = [], True
        self._add_output(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index)

    def log_eval(self, val_loss: float) -> None:
        """A validation loss (nats/token) for the latest logged row (or the next, if none)."""
        if self.rows:
            self.rows[-1][VAL_LOSS] = float(val_loss)
        else:
            self._pending_val = float(val_loss)

    # ---- observations (called from the hooks) ----------------------------------------------

    def _new_forward(self, module, args) -> None:
        if not _in_backward():
            self._layer = 0

    def _observe_probe(self, probe: AttnProbe) -> None:
        while len(self._layers) <= self._layer:
            self._layers.append([])
        self._layers[self._layer].append(probe)
        self._layer += 1

    def _observe_scores(self, scores: torch.Tensor) -> None:
        with torch.no_grad(), torch.autocast(device_type=scores.device.type, enabled=False):
            z = scores.detach().float()
            valid = z.amax(-1) > float("-inf")
            ent = torch.special.entr(z.softmax(-1)).sum(-1).masked_fill(~valid, 0.0).sum() / valid.sum()
            nan = torch.full((), float("nan"), device=z.device)
            self._observe_probe(AttnProbe(max_logit=z.amax(), entropy=ent, q_rms=nan, k_rms=nan))

    def _observe_cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> None:
        if self._explicit_out or targets.dtype.is_floating_point or logits.ndim < 2:
            return
        if logits.ndim > 2:  # (N, C, d1, ...) -> (N * d1 * ..., C)
            logits = logits.movedim(1, -1)
        self._add_output(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index)

    @torch.no_grad()
    def _add_output(self, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> None:
        keep = targets != ignore_index
        logits, targets = logits.detach()[keep], targets[keep]
        n = int(targets.numel())
        if n:
            self._outs.append((output_stats(logits.unsqueeze(0), targets.unsqueeze(0).long()), n))

    def _grad_hook(self, p: torch.Tensor) -> None:
        if p.grad is not None:
            self._gsq[id(p)] = torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float32).square()

    # ---- the row ---------------------------------------------------------------------------

    def _current_lr(self) -> float | None:
        if self.optimizer is None or not self.optimizer.param_groups:
            return None
        lr = self.optimizer.param_groups[0].get("lr")
        return float(lr) if lr is not None else None

    def _output(self) -> tuple[dict[str, torch.Tensor], int]:
        if not self._outs:
            nan = torch.tensor(float("nan"))
            return {"ce": nan, Z_LOSS: nan, LOGZ_MEAN: nan, OUTPUT_LOGIT_MEAN: nan}, 0
        n = sum(c for _, c in self._outs)
        keys = self._outs[0][0]
        return {k: sum(d[k].float() * c for d, c in self._outs) / n for k in keys}, n

    def _grads(self) -> tuple[float, dict[str, float]]:
        by_id = {id(p): n for n, p in self._params.items()}
        inv = 1.0 / self._scale ** 2
        if not self._gsq:
            nan = float("nan")
            return nan, {GRAD_RMS: nan, **{f"{GRAD_RMS}_{t}": nan for t in self.groups}}
        total = float(torch.stack(list(self._gsq.values())).sum()) * inv
        numel = sum(self._params[by_id[i]].numel() for i in self._gsq)
        row = {GRAD_RMS: _sqrt(total / numel)}
        for tag, names in self.groups.items():
            sq = [self._gsq[id(self._params[n])] for n in names if id(self._params[n]) in self._gsq]
            num = sum(self._params[n].numel() for n in names if id(self._params[n]) in self._gsq)
            row[f"{GRAD_RMS}_{tag}"] = _rms(sq, num) / self._scale if sq else float("nan")
        return _sqrt(total), row

    @torch.no_grad()
    def _updates(self) -> dict[str, float]:
        ups: dict[int, torch.Tensor] = {}
        opt = self.optimizer
        if opt is not None:
            for group in opt.param_groups:
                if "betas" not in group or "eps" not in group:
                    continue
                for p in group["params"]:
                    state = opt.state.get(p)
                    if state and "exp_avg_sq" in state:
                        u = adam_update(opt, p, group)
                        if u is not None:
                            ups[id(p)] = u
        usq = dict(zip(ups, _sq_norms(list(ups.values()))))
        params = list(self._params.values())
        psq = dict(zip((id(p) for p in params), _sq_norms(params)))
        row = {UPDATE_RMS: _rms(list(usq.values()), sum(p.numel() for p in params if id(p) in usq)),
               PARAM_RMS: _rms(list(psq.values()), sum(p.numel() for p in params))}
        for tag, names in self.groups.items():
            ps = [self._params[n] for n in names]
            got = [p for p in ps if id(p) in usq]
            row[f"{UPDATE_RMS}_{tag}"] = _rms([usq[id(p)] for p in got], sum(p.numel() for p in got))
            row[f"{PARAM_RMS}_{tag}"] = _rms([psq[id(p)] for p in ps], sum(p.numel() for p in ps))
        return row

    def _row(self) -> dict:
        out, n_tokens = self._output()
        per_step = self.tokens_per_step or n_tokens or None
        probes = [AttnProbe(max_logit=torch.stack([p.max_logit for p in ps]).amax(),
                            entropy=torch.stack([p.entropy for p in ps]).mean(),
                            q_rms=torch.stack([p.q_rms for p in ps]).mean(),
                            k_rms=torch.stack([p.k_rms for p in ps]).mean()) for ps in self._layers]
        grad_norm, grads = self._grads()
        row = signal_row(self._step, self._step * per_step if per_step else None,
                         self._lr if self._lr is not None else float("nan"), out, probes or None,
                         grad_norm, grads, self._updates(), val_loss=self._pending_val)
        self._pending_val = None
        row[LOGZ_RMS] = _sqrt(row[Z_LOSS]) if math.isfinite(row[Z_LOSS]) else float("nan")
        now = time.perf_counter()
        if self._last_log is not None and per_step:
            t0, s0 = self._last_log
            row[TOKENS_PER_S] = (self._step - s0) * per_step / max(now - t0, 1e-9)
        self._last_log = (now, self._step)
        if self._detector is None:
            self._detector = DivergenceDetector(row[LOSS], *_divergence_rule())
        else:
            self._detector.update(self._step, row[LOSS], row[GRAD_NORM])
        return row

    def _emit(self, row: dict) -> None:
        scalars = {k: float(v) for k, v in row.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != STEP and math.isfinite(v)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"stability/{k}", v, self._step)
        if self._wandb is not None:
            self._wandb.log({f"stability/{k}": v for k, v in scalars.items()}, step=self._step)

    # ---- files -----------------------------------------------------------------------------

    @property
    def diverged(self) -> bool:
        """Whether the project's divergence rule (monitor.DivergenceDetector) has fired."""
        return bool(self._detector and self._detector.diverged)

    def flush(self) -> None:
        """Rewrite out/metrics.parquet (atomically) with every row so far."""
        if self.rows:
            write_metrics(self.out / METRICS, self.rows)
        if self._tb is not None:
            self._tb.flush()
        self._last_flush = time.perf_counter()

    def close(self) -> dict | None:
        """End an open step, write metrics.parquet and summary.json (run_summary), close the
        TensorBoard writer and a wandb run the monitor started; returns the summary (None
        without rows). Calling it again does nothing."""
        if self._closed:
            return None
        self._end_window()
        self.flush()
        self._closed = True
        summary = None
        if self.rows:
            summary = run_summary(self.rows, self.card, self.probe_step)
            write_json(self.out / SUMMARY, summary)
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None and self._own_wandb:
            self._wandb.finish()
        self._finalizer.detach()
        return summary

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_metrics(path: str | Path, rows: list[dict]) -> Path:
    """Atomically write metrics rows (dicts, keys may differ between rows) as Parquet."""
    import polars as pl
    return write_parquet(path, pl.DataFrame(rows, infer_schema_length=None))


def _divergence_rule() -> tuple[float, int]:
    """(margin, window) of the project's divergence rule (train config defaults)."""
    from .config import RunConfig
    t = RunConfig().train
    return t.divergence_margin, t.divergence_window


def run_summary(rows: list[dict], card: Mapping[str, Any], probe_step: int | None = None) -> dict:
    """summary.json of a monitored run, in the project's summary format (docs/metrics.md):
    the signals of monitor.summarize over `rows` (metrics rows, step order) plus sizes,
    progress and a `config` of dotted keys the analysis reads (`optim.lr`, `data.name`,
    `train.log_every`, `train.probe_step`, `train.divergence_window`).

    init_loss is the training loss of the first logged row (its step's forward comes before
    that step's update); final_loss the last row's val_loss when it has one, else the mean
    training loss over summarize's final window (the last 20% of the logged steps).
    probe_step defaults to the last logged step. Raises ValueError without rows."""
    if not rows:
        raise ValueError("run_summary: no metrics rows")
    rows = sorted(rows, key=lambda r: r[STEP])
    last = rows[-1][STEP]
    probe = int(probe_step) if probe_step is not None else int(last)
    every = int(card.get("every") or DEFAULT_EVERY)
    margin, window_checks = _divergence_rule()
    init = rows[0].get(LOSS)
    init = float(init) if init is not None else float("nan")
    detector = DivergenceDetector(init, margin, window_checks)
    for r in rows[1:]:
        gn = r.get(GRAD_NORM)
        detector.update(r[STEP], float(r[LOSS]) if r.get(LOSS) is not None else float("nan"),
                        float(gn) if gn is not None else None)
    window = max(last // 5, every)
    val = rows[-1].get(VAL_LOSS)
    if val is not None and math.isfinite(val):
        final = float(val)
    else:
        tail = [float(r[LOSS]) if r.get(LOSS) is not None else float("nan") for r in rows if r[STEP] > last - window]
        final = sum(tail) / len(tail)  # NaN when any is: a run that blew up has no final loss
    cfg = SimpleNamespace(train=SimpleNamespace(grad_stats_window=0, log_every=every, probe_step=probe))
    signals = summarize(rows, cfg, detector, final)
    return {
        "run_id": card.get("name"),
        **signals,
        "params": card.get("params"),
        "non_embedding_params": card.get("non_embedding_params"),
        "steps_completed": int(last),
        "steps_planned": card.get("steps"),
        "stopped_early": False,
        "data_id": card.get("data"),
        "versions": card.get("versions"),
        "config": {"optim.lr": card.get("peak_lr"), "data.name": card.get("data"), "train.log_every": every,
                   "train.probe_step": probe, "train.divergence_window": window_checks,
                   "train.divergence_margin": margin, "model.class": card.get("model_class"),
                   "seed": card.get("seed")},
    }


def read_card(run_dir: str | Path) -> dict:
    """A monitored run's run_card.json. Raises FileNotFoundError / ValueError as read_json."""
    return read_json(Path(run_dir) / RUN_CARD)


__all__ = ["DEFAULT_EVERY", "DEFAULT_GROUPS", "Monitor", "attention_stats", "count_params", "observe_attention_logits",
           "observe_qk", "resolve_groups", "run_summary", "write_metrics"]
