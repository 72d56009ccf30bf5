"""The study's instability signals: every metrics.parquet row, the signal part of summary.json,
and divergence detection.

Each column and summary key is named once, here (docs/metrics.md is its one table, and
tests/test_docs.py checks the table against what a run writes). A new signal is one line in
`signal_row`, or in the stats function it draws on, plus its row in docs/metrics.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import RunConfig
from .model import AttnProbe, Transformer
from .optim import adam_update

# Names read back by code other than their writer get a constant (a typo is then an ImportError).
STEP, LOSS, Z_LOSS, VAL_LOSS = "step", "loss", "z_loss", "val_loss"
LOGZ_MEAN, OUTPUT_LOGIT_MEAN, MAX_ATTN_LOGIT = "logz_mean", "output_logit_mean", "max_attn_logit"
GRAD_NORM, GRAD_RMS, UPDATE_RMS, TOKENS_PER_S = "grad_norm", "grad_rms", "update_rms", "tokens_per_s"

# The paper's probe groups, as parameter paths in the model: block 0's first MLP matrix (its
# epsilon probe) and key projection. Each gives a `grad_rms_<tag>` and an `update_rms_<tag>` column.
PROBE_GROUPS = {"mlp0": "blocks.0.mlp.fc1.weight", "k0": "blocks.0.attn.k_proj.weight"}


def output_stats(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy and z-loss from one log-sum-exp (computed in fp32 even under bf16).

    logits (B, T, V) and int64 targets (B, T) give 0-d tensors: `ce` (nats/token, with grad),
    `z_loss` (mean of (log Z)^2, with grad), `logz_mean` and `output_logit_mean` (detached)."""
    logits = logits.float()
    logz = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return {
        "ce": (logz - target_logit).mean(),
        Z_LOSS: logz.pow(2).mean(),  # mean of squares, as the paper
        LOGZ_MEAN: logz.detach().mean(),
        OUTPUT_LOGIT_MEAN: logits.detach().mean(),
    }


def attention_columns(probes: list[AttnProbe] | None) -> dict[str, float]:
    """The probe-pass columns (one `attn_logit_l{i}` per layer, the logits the softmax saw, and
    `attn_logit_raw_l{i}` before the attention_logits seam where one is on); none off probe
    steps or without layers. A max-only pass (model.MAX_ONLY: no entropy) gives the max-logit
    columns alone."""
    if not probes:  # not a probe step, or a zero-layer model: no attention to probe
        return {}
    maxes = torch.stack([p.max_logit for p in probes]).tolist()
    row = {f"attn_logit_l{i}": v for i, v in enumerate(maxes)}
    row[MAX_ATTN_LOGIT] = max(maxes)
    if probes[0].entropy is None:  # the attention kernel's max scores (stability.kernel_max)
        return row
    entropies = torch.stack([p.entropy for p in probes]).tolist()
    if probes[0].max_logit_raw is not None:  # an intervention changes the logits (soft-capping): before it too
        raws = torch.stack([p.max_logit_raw for p in probes]).tolist()
        row.update({f"attn_logit_raw_l{i}": v for i, v in enumerate(raws)})
        row[f"{MAX_ATTN_LOGIT}_raw"] = max(raws)
    row["attn_entropy_min"] = min(entropies)
    row["q_rms_l0"] = float(probes[0].q_rms)
    row["k_rms_l0"] = float(probes[0].k_rms)
    return row


def probe_params(model: Transformer) -> dict[str, torch.nn.Parameter | None]:
    """PROBE_GROUPS resolved on `model`, tag -> parameter.

    Every group lives in block 0, so a zero-layer (bigram) model has none: each tag maps to
    None and its columns are NaN by design. Raises ValueError naming the group when a model
    with blocks lacks one (model.py renamed a layer and PROBE_GROUPS was not updated)."""
    if len(model.blocks) == 0:
        return dict.fromkeys(PROBE_GROUPS)
    params = {}
    for tag, path in PROBE_GROUPS.items():
        try:
            params[tag] = model.get_parameter(path)
        except AttributeError as e:
            raise ValueError(f"monitor.PROBE_GROUPS[{tag!r}]: the model has no parameter {path!r} ({e})") from None
    return params


def _rms_of(tensors: list[torch.Tensor]) -> float:
    if not tensors:
        return float("nan")
    sq = sum(t.float().pow(2).sum() for t in tensors)
    n = sum(t.numel() for t in tensors)
    return float((sq / n).sqrt())


@torch.no_grad()
def grad_stats(model: Transformer) -> dict[str, float]:
    """Gradient RMS overall and per probe group (NaN for a group without a gradient); call
    before clipping. Raises ValueError as probe_params."""
    row = {GRAD_RMS: _rms_of([p.grad for _, p in model.named_parameters() if p.grad is not None])}
    for tag, p in probe_params(model).items():
        row[f"{GRAD_RMS}_{tag}"] = _rms_of([p.grad]) if p is not None and p.grad is not None else float("nan")
    return row


@torch.no_grad()
def update_stats(model: Transformer, optimizer: torch.optim.AdamW) -> dict[str, float]:
    """Unscaled Adam update RMS (the update divided by the LR) overall and per probe group, and
    parameter RMS; call after the optimizer step. Raises ValueError as probe_params."""
    updates: dict[int, torch.Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            u = adam_update(optimizer, p, group)
            if u is not None:
                updates[id(p)] = u
    row = {UPDATE_RMS: _rms_of(list(updates.values())), "param_rms": _rms_of([p for _, p in model.named_parameters()])}
    for tag, p in probe_params(model).items():
        row[f"{UPDATE_RMS}_{tag}"] = _rms_of([updates[id(p)]]) if p is not None and id(p) in updates else float("nan")
    return row


def signal_row(step: int, tokens: int, lr: float, out: dict[str, torch.Tensor], probes: list[AttnProbe] | None,
               grad_norm: float | None = None, grads: dict[str, float] | None = None,
               updates: dict[str, float] | None = None, val_loss: float | None = None) -> dict:
    """One metrics.parquet row (docs/metrics.md), at step 0 and at every logged step.

    `out` is output_stats of the step's batch, `probes` the probe pass (None off probe steps),
    `tokens` the training tokens seen. Step 0 comes before any update: without `grad_norm` the
    row has no gradient, update or throughput columns. After an update `grads` and `updates`
    are grad_stats and update_stats, and the loop fills `tokens_per_s` (and `val_loss` on eval
    steps) once it has timed the step."""
    row = {STEP: step, "tokens": tokens, "lr": lr, LOSS: float(out["ce"].detach()),
           Z_LOSS: float(out[Z_LOSS].detach()), **attention_columns(probes),
           LOGZ_MEAN: float(out[LOGZ_MEAN]), OUTPUT_LOGIT_MEAN: float(out[OUTPUT_LOGIT_MEAN])}
    if grad_norm is None:
        return {**row, VAL_LOSS: val_loss}
    return {**row, GRAD_NORM: grad_norm, **grads, **updates, VAL_LOSS: val_loss, TOKENS_PER_S: None}


def _finite_or_none(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _probe_step_value(rows: list[dict], probe_step: int):
    """The max logit logged at the largest step <= probe_step (the last one if the run stopped earlier)."""
    candidates = [r for r in rows if r.get(MAX_ATTN_LOGIT) is not None and 0 < r[STEP] <= probe_step]
    return candidates[-1][MAX_ATTN_LOGIT] if candidates else None


def _window_mean(rows: list[dict], key: str, window_steps: int, last_step: int):
    """Mean of the finite values of `key` over logged steps in (last_step - window_steps, last_step]."""
    vals = [r[key] for r in rows if r[STEP] > last_step - window_steps and r.get(key) is not None
            and math.isfinite(r[key]) and r[STEP] > 0]
    return float(np.mean(vals)) if vals else None


def _sqrt_or_none(v):
    return math.sqrt(v) if v is not None and v >= 0 else None


def summarize(rows: list[dict], cfg: RunConfig, detector: DivergenceDetector, final_loss: float) -> dict:
    """The signal part of summary.json (docs/metrics.md), `init_loss` to `output_logit_mean_final`.

    `rows` are the run's metrics rows (step 0 first), `detector` the run's DivergenceDetector
    and `final_loss` the validation loss at the last step (nats/token). Non-finite values and
    signals the run never logged (a zero-layer model's attention) are None."""
    t = cfg.train
    last = rows[-1][STEP]
    window = t.grad_stats_window or max(last // 5, t.log_every)

    def final(key: str) -> float | None:
        return _window_mean(rows, key, window, last)

    logged = [r for r in rows if r[STEP] > 0]
    attn = [r[MAX_ATTN_LOGIT] for r in rows if r.get(MAX_ATTN_LOGIT) is not None and math.isfinite(r[MAX_ATTN_LOGIT])]
    return {
        "init_loss": detector.init_loss,
        "final_loss": _finite_or_none(final_loss),
        "final_train_loss": _finite_or_none(logged[-1][LOSS]) if logged else None,
        "diverged": detector.diverged,
        "diverged_step": detector.step,
        "diverged_reason": detector.reason,
        "max_attn_logit": max(attn) if attn else None,
        "probe_step": t.probe_step,
        "max_attn_logit_at_probe": _finite_or_none(_probe_step_value(rows, t.probe_step)),
        "grad_rms_final": final(f"{GRAD_RMS}_mlp0"),
        "update_rms_final": final(f"{UPDATE_RMS}_mlp0"),
        "grad_rms_all_final": final(GRAD_RMS),
        "logz_final": final(LOGZ_MEAN),
        # RMS over tokens of log Z (sqrt of the unscaled z-loss): the per-token drift of
        # finding 2, which a mean over tokens can hide when log Z spreads both ways.
        "logz_rms_final": _sqrt_or_none(final(Z_LOSS)),
        # the mean output logit, the quantity the paper's Fig. 4 plots for finding 2
        "output_logit_mean_final": final(OUTPUT_LOGIT_MEAN),
    }


@dataclass
class DivergenceDetector:
    """A run diverges on a non-finite loss or gradient, or when the loss stays more than
    `margin` nats above the loss at initialisation for `window` consecutive checks.

    It sees only steps after an update: a non-finite value at initialisation is the config's
    arithmetic, refused by train.check_init_finite, never recorded as a divergence."""
    init_loss: float
    margin: float
    window: int
    above: int = 0
    diverged: bool = False
    step: int | None = None
    reason: str | None = None

    def update(self, step: int, loss: float, grad_norm: float | None = None) -> bool:
        if self.diverged:
            return True
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            self._mark(step, "non-finite loss" if not math.isfinite(loss) else "non-finite gradient")
        elif loss > self.init_loss + self.margin:
            self.above += 1
            if self.above >= self.window:
                self._mark(step, f"loss above init_loss + {self.margin} for {self.window} checks")
        else:
            self.above = 0
        return self.diverged

    def _mark(self, step: int, reason: str) -> None:
        self.diverged, self.step, self.reason = True, step, reason

    def state_dict(self) -> dict:
        return {"above": self.above, "diverged": self.diverged, "step": self.step, "reason": self.reason}

    def load_state_dict(self, s: dict) -> None:
        self.above, self.diverged, self.step, self.reason = s["above"], s["diverged"], s["step"], s["reason"]
