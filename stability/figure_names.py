"""Which figures each paper finding needs. Kept apart from figures.py so the Snakefile can
plan figure targets without importing Altair."""
from __future__ import annotations

FIGURES_BY_FINDING: dict[int, tuple[str, ...]] = {
    1: ("lr_vs_loss", "sensitivity_vs_size", "attn_logit_vs_step", "attn_logit_vs_lr"),
    2: ("lr_vs_loss", "logz_vs_step"),
    3: ("lr_vs_loss", "sensitivity_vs_size"),
    4: ("lr_vs_loss", "sensitivity_vs_size"),
    5: ("lr_vs_loss", "sensitivity_vs_size"),
    6: ("lr_vs_loss", "sensitivity_vs_size"),
    7: ("lr_vs_loss", "sensitivity_vs_size"),
    8: ("forecast", "attn_logit_vs_lr"),
    9: ("kappa",),
    10: ("grad_rms_vs_size", "update_rms"),
    11: ("lr_vs_loss", "sensitivity_vs_size"),
}


def figures_for(findings: list[int]) -> list[str]:
    """The figure names a study draws, in a stable order, each once."""
    out: list[str] = []
    for f in findings or [1]:
        for name in FIGURES_BY_FINDING.get(int(f), ("lr_vs_loss",)):
            if name not in out:
                out.append(name)
    return out
