"""Two Adam variants for `optim.algorithm` (stability/interventions/algorithms.py), written
out per tensor to stay readable. Each keeps AdamW's moments (`exp_avg`, `exp_avg_sq`,
`step`) and its decoupled weight decay (p <- p * (1 - lr * weight_decay), the project's
independent decay set through `weight_decay` as for torch AdamW), and gives
`unscaled_update(p, group)`: the step's update divided by the LR, weight decay excluded (the
'update RMS' signal, stability.optim.adam_update).
"""
from __future__ import annotations

import torch


class _Adam(torch.optim.Optimizer):
    """The moments and the loop; subclasses give the direction of each step."""

    def __init__(self, params, lr: float, betas: tuple[float, float], **defaults):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": 0.0, **defaults})

    def direction(self, p: torch.Tensor, state: dict, group: dict) -> tuple[torch.Tensor, torch.Tensor | float]:
        """(u, s) from the state after this step's moments: the step is p <- p - lr * s * u
        (and the decay uses lr * s)."""
        raise NotImplementedError

    def observe(self, p: torch.Tensor, state: dict, group: dict) -> None:
        """Keep in `state` what `direction` needs from this step's gradient (p.grad)."""

    def moments(self, state: dict, group: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The bias-corrected moments (m_hat, v_hat) after this step's update of m and v."""
        beta1, beta2 = group["betas"]
        step = float(state["step"])
        return state["exp_avg"] / (1 - beta1 ** step), state["exp_avg_sq"] / (1 - beta2 ** step)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                state["exp_avg"].lerp_(p.grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                self.observe(p, state, group)
                u, s = self.direction(p, state, group)
                lr = group["lr"] * s
                p.mul_(1 - lr * group["weight_decay"])
                p.sub_(lr * u)
        return loss

    @torch.no_grad()
    def unscaled_update(self, p: torch.Tensor, group: dict) -> torch.Tensor | None:
        state = self.state.get(p)
        if not state or "exp_avg" not in state:
            return None
        u, s = self.direction(p, state, group)
        return u * s


class AdamAtan2(_Adam):
    """Adam-atan2 (Everett et al. 2024, "Scaling Exponents Across Parameterizations and
    Optimizers", arXiv 2407.05872, Sec. 4.4): the update a * atan2(m_hat, b * sqrt(v_hat))
    replaces m_hat / (sqrt(v_hat) + eps). No epsilon: atan2(0, 0) = 0, and the update is
    invariant to the scale of the gradients. a = 1.27 (about 4/pi) and b = 1, the constants
    of the public PyTorch port (lucidrains/adam-atan2-pytorch): a step is then 1 where
    m_hat = sqrt(v_hat) (Adam's sign-like step) and never more than a * pi / 2 = 2."""

    def __init__(self, params, lr: float, betas: tuple[float, float], a: float = 1.27, b: float = 1.0):
        super().__init__(params, lr, betas, a=a, b=b)

    def direction(self, p, state, group):
        m_hat, v_hat = self.moments(state, group)
        return group["a"] * torch.atan2(m_hat, group["b"] * v_hat.sqrt()), 1.0


class StableAdamW(_Adam):
    """StableAdamW (Wortsman et al. 2023b, "Stable and low-precision training for large-scale
    vision-language models", arXiv 2304.13013, Algorithm 2): AdamW with AdaFactor's update
    clipping per tensor. The LR of a tensor is divided by max(1, RMS_t),
    RMS_t = sqrt(mean(g_t^2 / max(v_hat_t, eps^2))): when the second moment lags behind a
    gradient spike (RMS_t > 1) the step shrinks instead of spiking. The decay uses the
    divided LR too, as there."""

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float):
        super().__init__(params, lr, betas, eps=eps)

    def observe(self, p, state, group):
        _, v_hat = self.moments(state, group)
        state["clip"] = (p.grad.pow(2) / v_hat.clamp_min(group["eps"] ** 2)).mean().sqrt().clamp_min(1.0)

    def direction(self, p, state, group):
        m_hat, v_hat = self.moments(state, group)
        return m_hat / (v_hat.sqrt() + group["eps"]), 1.0 / state["clip"]
