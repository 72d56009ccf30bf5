"""Every finished run of one or more results folders as a labelled early-warning example.

A results folder is what the workflow writes: `studies/<study>/runs.parquet` (the aggregated
runs tables) and `runs/<run_id>/metrics.parquet`. The label is the analysis's own: a run is
`failed` as `stability.analysis.sensitivity.scored` says in the study table that holds it
(a run two studies share has one label; the first table read gives it). Runs without a
metrics file or without a finite init_loss (never finished) are left out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import polars as pl

from ..analysis.sensitivity import scored
from ..config import ConfigError
from . import features as F

KS = (0.05, 0.10, 0.20)
META = ("run_id", "results", "study", "dataset", "scale", "variant", "lr", "seed",
        "non_embedding_params", "steps_planned", "eps", "failed", "failure_mode")


def _col(df: pl.DataFrame, name: str, dtype: pl.DataType, default=None) -> pl.Expr:
    return pl.col(name).cast(dtype, strict=False) if name in df.columns else pl.lit(default, dtype=dtype)


def labelled_runs(results: str | Path) -> pl.DataFrame:
    """One row per run of a results folder's study tables: META columns but `failure_mode`.

    dataset: the run's `data.source` (`synthetic`, `text`, `huggingface`), with the text file's
    name for `text` (e.g. `text:kjv.txt`). Raises ConfigError (one line naming the path and
    what was expected) when the folder holds no `studies/*/runs.parquet`.
    """
    results = Path(results)
    tables = sorted(results.glob("studies/*/runs.parquet"))
    if not tables:
        raise ConfigError(f"{results}: no studies/*/runs.parquet; expected a results folder the workflow "
                          "wrote (studies/<study>/runs.parquet and runs/<run_id>/metrics.parquet)")
    parts = []
    for t in tables:
        df = scored(pl.read_parquet(t))
        if df.is_empty():
            continue
        source = _col(df, "data.source", pl.String, "synthetic").fill_null("synthetic")
        path = _col(df, "data.path", pl.String, "").fill_null("")
        parts.append(df.select(
            pl.col("run_id").cast(pl.String), results=pl.lit(str(results)),
            study=_col(df, "study", pl.String, t.parent.name).fill_null(t.parent.name),
            dataset=pl.when(source == "text").then(pl.lit("text:") + path.str.split("/").list.last())
            .otherwise(source),
            scale=_col(df, "scale", pl.String), variant=_col(df, "variant", pl.String),
            lr=_col(df, "lr", pl.Float64), seed=_col(df, "seed", pl.Int64),
            non_embedding_params=_col(df, "non_embedding_params", pl.Float64),
            steps_planned=pl.coalesce(_col(df, "steps_planned", pl.Int64), _col(df, "train.steps", pl.Int64)),
            eps=_col(df, "optim.eps", pl.Float64, 1e-8).fill_null(1e-8),
            failed=pl.col("failed").cast(pl.Boolean)))
    if not parts:
        return pl.DataFrame(schema={c: pl.String for c in META if c != "failure_mode"})
    runs = pl.concat(parts, how="vertical_relaxed").unique("run_id", keep="first", maintain_order=True)
    present = [(results / "runs" / r / "metrics.parquet").is_file() for r in runs["run_id"]]
    return runs.filter(pl.Series(present))


def build(results_dirs: Sequence[str | Path], ks: Iterable[float] = KS) -> pl.DataFrame:
    """The examples table: one row per (run, k) with META, FEATURES and BASELINES columns.

    results_dirs: results folders (see `labelled_runs`; a run id present in two folders is
    kept once, from the first); ks: window fractions in (0, 1]. A run whose first k of
    planned steps hold fewer than two logged rows (step 0 and one update) has no row at that
    k. failure_mode: the rule of `features` (`none` for runs that trained). Raises ConfigError
    for a folder without study tables, ValueError for a k outside (0, 1].
    """
    ks = [float(k) for k in ks]
    for k in ks:
        if not 0 < k <= 1:
            raise ValueError(f"k must be a fraction in (0, 1], got {k}")
    runs = pl.concat([labelled_runs(d) for d in results_dirs], how="vertical_relaxed")
    runs = runs.unique("run_id", keep="first", maintain_order=True)
    rows = []
    for r in runs.iter_rows(named=True):
        m = pl.read_parquet(Path(r["results"]) / "runs" / r["run_id"] / "metrics.parquet").sort("step")
        steps = int(r["steps_planned"] or (m["step"].max() or 1))
        mode = F.failure_mode(m, r["eps"], bool(r["failed"]))
        for k in ks:
            if not F.has_window(m, k, steps):
                continue
            rows.append({**r, "steps_planned": steps, "failure_mode": mode, "k": k,
                         **F.features(m, k, steps, r["eps"]), **F.baselines(m, k, steps)})
    schema = {c: pl.Float64 for c in (*F.FEATURES, *F.BASELINES)}
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(
        [pl.col(c).cast(t) for c, t in schema.items()]) if rows else pl.DataFrame(schema=schema)


def scale_order(examples: pl.DataFrame) -> list[str]:
    """Scale names from smallest to largest by their median non-embedding parameter count."""
    s = (examples.group_by("scale").agg(pl.col("non_embedding_params").median().alias("p"))
         .sort("p", "scale"))
    return [x for x in s["scale"].to_list() if x is not None]
