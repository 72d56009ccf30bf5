"""The study's instability signals, computed cheaply on logging steps, and divergence detection.

Signals (docs/metrics.md): attention logits and entropy from probe passes, log Z and the
mean output logit from the training forward, gradient / Adam-update / parameter RMS overall
and for the paper's probe groups (block 0's first MLP matrix and key projection).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .model import AttnProbe, Transformer
from .optim import adam_update

PROBE_GROUPS = {"mlp0": "blocks.0.mlp.fc1.weight", "k0": "blocks.0.attn.k_proj.weight"}


def output_stats(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy and z-loss from one log-sum-exp (computed in fp32 even under bf16)."""
    logits = logits.float()
    logz = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return {
        "ce": (logz - target_logit).mean(),
        "z_loss": logz.pow(2).mean(),  # mean of squares, as the paper
        "logz_mean": logz.detach().mean(),
        "output_logit_mean": logits.detach().mean(),
    }


def attention_columns(probes: list[AttnProbe]) -> dict[str, float]:
    if not probes:  # a zero-layer model has no attention to probe
        return {}
    maxes = torch.stack([p.max_logit for p in probes]).tolist()
    entropies = torch.stack([p.entropy for p in probes]).tolist()
    row = {f"attn_logit_l{i}": v for i, v in enumerate(maxes)}
    row["max_attn_logit"] = max(maxes)
    row["attn_entropy_min"] = min(entropies)
    row["q_rms_l0"] = float(probes[0].q_rms)
    row["k_rms_l0"] = float(probes[0].k_rms)
    return row


def _rms_of(tensors: list[torch.Tensor]) -> float:
    if not tensors:
        return float("nan")
    sq = sum(t.float().pow(2).sum() for t in tensors)
    n = sum(t.numel() for t in tensors)
    return float((sq / n).sqrt())


@torch.no_grad()
def grad_stats(model: Transformer) -> dict[str, float]:
    """Gradient RMS overall and for the probe groups; call before clipping."""
    named = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    row = {"grad_rms": _rms_of(list(named.values()))}
    for tag, name in PROBE_GROUPS.items():
        row[f"grad_rms_{tag}"] = _rms_of([named[name]]) if name in named else float("nan")
    return row


@torch.no_grad()
def update_stats(model: Transformer, optimizer: torch.optim.AdamW) -> dict[str, float]:
    """Unscaled Adam update RMS (the update divided by the LR) and parameter RMS; call after
    the optimizer step."""
    updates: dict[int, torch.Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            u = adam_update(optimizer, p, group)
            if u is not None:
                updates[id(p)] = u
    named = dict(model.named_parameters())
    row = {"update_rms": _rms_of(list(updates.values())), "param_rms": _rms_of(list(named.values()))}
    for tag, name in PROBE_GROUPS.items():
        p = named.get(name)
        row[f"update_rms_{tag}"] = _rms_of([updates[id(p)]]) if p is not None and id(p) in updates else float("nan")
    return row


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
