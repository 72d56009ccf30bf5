"""Analysis of one study's runs: aggregate -> sensitivity -> fits -> forecast -> claims.

Plain functions over Polars frames; nothing here imports Snakemake or torch. The workflow
rules call these through one-line shims in workflow/scripts/.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import polars as pl

from .claims import claims, write_claims
from .fits import fit_table
from .forecast import forecast, forecast_table
from ..io import atomic_write, write_json, write_parquet
from .sensitivity import sensitivity_table


def analyse_study(runs_path: str | Path, outputs: Mapping[str, str | Path],
                  study_info: dict[str, Any]) -> dict[str, Any]:
    """Read the study's runs table (`runs_path`: runs.parquet, one row per run) and write the
    analysis to the paths in `outputs`, keyed as the analyse rule's outputs: `sensitivity`
    and `fits` (parquet), `forecast` (JSON), `forecast_table` (CSV), `claims` (JSON).

    study_info = {"name", "findings", "reference", "options"} (options: the study's
    `analysis:` mapping). Returns the output paths and the claims. Raises KeyError if
    `outputs` lacks one of the five keys (before anything is written).
    """
    targets = {k: Path(outputs[k]) for k in ("sensitivity", "fits", "forecast", "forecast_table", "claims")}
    runs = pl.read_parquet(runs_path)
    options = study_info.get("options") or {}
    sens = sensitivity_table(runs)
    fits = fit_table(runs, sens, options, study=study_info.get("name", ""))
    fc = forecast(runs, study_info)
    items = claims(study_info, runs, sens, fits, fc)
    caveat = options.get("caveat")  # the study config's reading of a failure (scale, steps, data)
    for c in items:
        if caveat and c.get("outcome") != "reproduced":
            c["likely_reason"] = caveat
    paths = {
        "sensitivity": write_parquet(targets["sensitivity"], sens),
        "fits": write_parquet(targets["fits"], fits),
        "forecast": write_json(targets["forecast"], fc),
        "forecast_table": atomic_write(targets["forecast_table"], lambda p: forecast_table(fc).write_csv(p)),
        "claims": write_claims(items, targets["claims"], study_info.get("name", "")),
    }
    return {**paths, "claims_list": items, "n_runs": runs.height}


__all__ = ["analyse_study", "claims", "fit_table", "forecast", "sensitivity_table"]
