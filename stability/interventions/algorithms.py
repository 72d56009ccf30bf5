"""`optim.algorithm`: the optimizer, AdamW unless set (stability.optimizers holds the others).

- `adam_atan2` (Everett et al. 2024, arXiv 2407.05872): atan2(m_hat, sqrt(v_hat)) in place of
  m_hat / (sqrt(v_hat) + eps): no epsilon, so no update collapse when the gradient RMS nears
  eps (the paper's Sec. 3.4 epsilon collapse, finding 10); `optim.eps` is unused.
- `stable_adamw` (Wortsman et al. 2023b, arXiv 2304.13013): AdamW with per-tensor update
  clipping, against loss spikes from a second moment that lags a gradient spike. That cause
  is not one of FAILURE_MODES; `mitigates` names Adam-atan2's.
"""
from __future__ import annotations

from typing import Literal

from . import Intervention, Key, register


@register
class Algorithm(Intervention):
    name = "optimizer"
    keys = {"optim.algorithm": Key(type=Literal["adamw", "adam_atan2", "stable_adamw"], default="adamw")}
    mitigates = ("epsilon_collapse",)  # adam_atan2's (it has no epsilon); stable_adamw targets stale-v spikes
    test = "tests/test_optimizers.py::test_adam_atan2_update_is_invariant_to_eps_and_finite_for_zero_gradients"
    off = {"optim.algorithm": "adamw"}

    def optimizer(self, c, param_groups: list[dict]):
        from ..optimizers import AdamAtan2, StableAdamW
        if c.algorithm == "adam_atan2":
            return AdamAtan2(param_groups, lr=c.lr, betas=(c.beta1, c.beta2))
        return StableAdamW(param_groups, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps)
