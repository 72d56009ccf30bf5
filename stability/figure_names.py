"""Which figures each paper finding needs, read from the findings registry. Kept apart from
figures.py so the Snakefile can plan figure targets without importing Altair."""
from __future__ import annotations

from .analysis.findings import REGISTRY, figures_for

FIGURES_BY_FINDING: dict[int, tuple[str, ...]] = {n: f.figures for n, f in REGISTRY.items()}

__all__ = ["FIGURES_BY_FINDING", "figures_for"]
