"""Analysis of one study's runs: aggregate -> sensitivity -> fits -> forecast -> claims.

Plain functions over Polars frames; nothing here imports Snakemake or torch. The workflow
rules call these through one-line shims in workflow/scripts/.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from .claims import claims, write_claims
from .fits import fit_table
from .forecast import forecast, forecast_table
from ..io import atomic_write, write_json, write_parquet
from .sensitivity import sensitivity_table

OUTPUTS = ("sensitivity.parquet", "fits.parquet", "forecast.json", "forecast.csv", "claims.json")


def analyse_study(study_dir: Path, study_info: dict[str, Any]) -> dict[str, Any]:
    """Read study_dir/runs.parquet; write sensitivity.parquet, fits.parquet, forecast.json, claims.json.

    study_info = {"name", "findings", "reference", "options"} (options: the study's
    `analysis:` mapping). Returns the output paths and the claims.
    """
    study_dir = Path(study_dir)
    runs = pl.read_parquet(study_dir / "runs.parquet")
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
        "sensitivity": write_parquet(study_dir / "sensitivity.parquet", sens),
        "fits": write_parquet(study_dir / "fits.parquet", fits),
        "forecast": write_json(study_dir / "forecast.json", fc),
        "forecast_table": atomic_write(study_dir / "forecast.csv", lambda p: forecast_table(fc).write_csv(p)),
        "claims": write_claims(items, study_dir / "claims.json", study_info.get("name", "")),
    }
    return {**paths, "claims_list": items, "n_runs": runs.height}


__all__ = ["analyse_study", "claims", "fit_table", "forecast", "sensitivity_table", "OUTPUTS"]
