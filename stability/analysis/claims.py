"""claims.json: the findings registry's verdicts for one study.

Every claim is the registry entry of its finding (statement, source, quantity, rule,
thresholds) plus `outcome` (stability.analysis.verdict.OUTCOMES), `effect` (the headline
interval), `subchecks`, `measured` (numbers computed from the study's tables) and `note`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from .findings import run_checks
from ..io import write_json


def claims(study: Any, runs: pl.DataFrame, sensitivity: pl.DataFrame, fits: pl.DataFrame | None,
           forecast: dict | None) -> list[dict[str, Any]]:
    """One claim per finding the study lists (see stability.analysis.findings.run_checks)."""
    return run_checks(study, runs, sensitivity, fits, forecast)


def write_claims(items: list[dict], path: Path, study: str = "") -> Path:
    return write_json(path, {"study": study, "claims": items})
