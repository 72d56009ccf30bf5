"""AdamW with the study's knobs: independent or coupled weight decay, muParam LR scaling,
linear warm-up then cosine decay to an absolute minimum LR, and a configurable epsilon.
An intervention can replace AdamW (`optim.algorithm`: stability.optimizers).

The schedule is a pure function of the step, so a resumed run needs no scheduler state.
"""
from __future__ import annotations

import math

import torch

from . import interventions
from .config import OptimConfig
from .model import Transformer, hidden_matrices


def schedule(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """s_t in [0, 1]: the fraction of the peak LR used at optimizer step `step` (1-based)."""
    if cfg.warmup_steps > 0 and step <= cfg.warmup_steps:
        return step / cfg.warmup_steps
    decay_steps = max(total_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / decay_steps, 1.0)
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_multipliers(model: Transformer) -> dict[str, float]:
    """Per-parameter LR multipliers {name: multiplier} from the interventions on (muParam's
    base_width / width on hidden matrices); a parameter not named has 1."""
    mults: dict[str, float] = {}
    for iv, c in interventions.active(model.cfg, "model"):  # seam: lr_multipliers
        for name, m in iv.lr_multipliers(c, model).items():
            mults[name] = mults.get(name, 1.0) * m
    return mults


def _decays(name: str, p: torch.nn.Parameter, decay_on: str, hidden: set[str]) -> bool:
    if decay_on == "all":
        return True
    if decay_on == "hidden_matrices":
        return name in hidden
    return p.ndim == 2  # "matrices": embedding, head and hidden matrices, not LayerNorm gains


def build_optimizer(model: Transformer, cfg: OptimConfig) -> torch.optim.Optimizer:
    """One param group per (LR multiplier, decay) pair. Each group keeps its peak LR in
    `peak_lr`; `set_lr` applies the schedule. A group's weight_decay comes from the
    interventions on (the paper's weight decay, stability.interventions.paper); 0 without.
    AdamW, unless an intervention on gives another optimizer."""
    mults = lr_multipliers(model)
    hidden = set(hidden_matrices(model))
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        key = (mults.get(name, 1.0), _decays(name, p, cfg.decay_on, hidden))
        groups.setdefault(key, []).append(p)
    param_groups = []
    for (mult, decays), params in sorted(groups.items()):
        peak = cfg.lr * mult
        wd = 0.0
        for iv, c in interventions.active(cfg, "optim"):  # seam: weight_decay
            own = iv.weight_decay(c, peak, decays)
            wd = wd if own is None else own
        param_groups.append({"params": params, "lr": peak, "peak_lr": peak, "lr_mult": mult, "weight_decay": wd})
    for iv, c in interventions.overriding(interventions.active(cfg, "optim"), "optimizer"):  # seam: optimizer
        return iv.optimizer(c, param_groups)
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)  # one kernel per group (CPU and CUDA, torch >= 2.4)


def set_lr(optimizer: torch.optim.Optimizer, s_t: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * s_t


@torch.no_grad()
def adam_update(optimizer: torch.optim.Optimizer, p: torch.nn.Parameter, group: dict) -> torch.Tensor | None:
    """The unscaled Adam update m_hat / (sqrt(v_hat) + eps) of the step just taken (the
    paper's 'update RMS' quantity: what the LR multiplies, weight decay excluded); another
    optimizer's own (its `unscaled_update`, stability.optimizers). None before p's first step."""
    if hasattr(optimizer, "unscaled_update"):
        return optimizer.unscaled_update(p, group)
    state = optimizer.state.get(p)
    if not state or "exp_avg" not in state:
        return None
    beta1, beta2 = group["betas"]
    step = float(state["step"])
    m_hat = state["exp_avg"] / (1 - beta1 ** step)
    v_hat = state["exp_avg_sq"] / (1 - beta2 ** step)
    return m_hat / (v_hat.sqrt() + group["eps"])
