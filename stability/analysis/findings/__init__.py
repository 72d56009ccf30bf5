"""The registry of the paper's findings: one module per finding, each registering one
`Finding` (claim, source, quantity, figures, check, decision rule, thresholds with reasons).

    REGISTRY[n]            the Finding object of finding n (1..11)
    run_checks(study, ...) one claim record per finding a study lists
    figures_for(findings)  the figure names a study draws
"""
from __future__ import annotations

import traceback
from typing import Any

import polars as pl

from . import (f01_attn_logit_growth, f02_output_logit_divergence, f03_warmup, f04_weight_decay,  # noqa: F401
               f05_width_depth, f06_mup, f07_steps_batch, f08_forecast, f09_kappa, f10_adam_epsilon, f11_combined)
from .base import REGISTRY, Ctx, Finding, Threshold, not_run, result

PAPER = "Wortsman et al. 2023, Small-scale proxies for large-scale Transformer training instabilities (arXiv 2309.14322)"


def figures_for(findings: list[int]) -> list[str]:
    """The figure names a study draws, in a stable order, each once (lr_vs_loss if none)."""
    out: list[str] = []
    for f in findings or [1]:
        entry = REGISTRY.get(int(f))
        for name in entry.figures if entry else ("lr_vs_loss",):
            if name not in out:
                out.append(name)
    return out


def run_checks(study: Any, runs: pl.DataFrame, sensitivity: pl.DataFrame, fits: pl.DataFrame | None,
               forecast: dict | None) -> list[dict[str, Any]]:
    """One claim record per finding the study lists (study: a grid.Study or {name, findings,
    reference, options}). A check that raises yields `not run` with the error, so one broken
    check never hides the others."""
    ctx = Ctx(study, runs, sensitivity, fits, forecast)
    out = []
    for f in ctx.findings:
        entry = REGISTRY.get(int(f))
        if entry is None:
            out.append(not_run(int(f), f"finding {f} is not one of the paper's 11 findings"))
        elif ctx.runs.is_empty():
            out.append(not_run(int(f), "no finished runs"))
        else:
            try:
                out.append(entry.check(ctx))
            except Exception as e:  # noqa: BLE001
                out.append(not_run(int(f), f"check failed: {type(e).__name__}: {e}",
                                   {"traceback": traceback.format_exc(limit=3)}))
    return out


__all__ = ["REGISTRY", "Ctx", "Finding", "Threshold", "PAPER", "figures_for", "result", "run_checks"]
