"""Gather finished runs into one study's tables: runs.parquet and curves.parquet.

runs.parquet   one row per manifest row (study, run_id, scale, variant, lr, seed) + the
               run's flattened config (dotted keys) + its flattened summary.json +
               logz_rms_init (from the run's step-0 metrics row) + the run outcomes
               `failed` and `loss_capped` (sensitivity.with_outcome; null for a run
               without a finite init_loss).
curves.parquet the same six key columns + every metrics.parquet column, downsampled to at
               most MAX_CURVE_ROWS evenly spaced rows per run (first and last kept).

Built for studies of ~10k runs: a run's config and summary are one JSON file, and the
metrics files are read by a few multi-file Polars scans (one per distinct file schema)
over an explicit list of paths.
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import polars as pl
import yaml

from ..config import flatten
from ..io import read_json, write_parquet
from ..yamlio import FastLoader
from .sensitivity import with_outcome

KEY_COLUMNS = ("study", "run_id", "scale", "variant", "lr", "seed")
MAX_CURVE_ROWS = 200
SPARSE_COLUMNS = ("max_attn_logit", "val_loss")  # set on probe / eval steps only
_LAYER_COL = re.compile(r"attn_logit_l\d+")
_KEY_SCHEMA = {"study": pl.String, "run_id": pl.String, "scale": pl.String, "variant": pl.String,
               "lr": pl.Float64, "seed": pl.Int64}


# ---- one run -----------------------------------------------------------------------------

def read_summary(path: Path) -> dict[str, Any]:
    """A run's summary.json as written ({} when the run has not finished)."""
    try:
        return read_json(path)
    except FileNotFoundError:
        return {}


def read_config(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The run's resolved config as dotted keys: summary["config"] as `stability train`
    writes it; for a run without one (unfinished, or finished before summaries carried it)
    the run's config.yaml, read in the product's YAML dialect ({} when that is missing too)."""
    if "config" in summary:
        return summary["config"]
    try:
        text = (Path(run_dir) / "config.yaml").read_text()
    except FileNotFoundError:
        return {}
    return flatten(yaml.load(text, Loader=FastLoader) or {})


# ---- runs table --------------------------------------------------------------------------

def _run_row(row: dict, runs_dir: Path) -> dict[str, Any]:
    run_dir = runs_dir / str(row["run_id"])
    out = {k: row.get(k) for k in KEY_COLUMNS}
    summary = read_summary(run_dir / "summary.json")
    for k, v in read_config(run_dir, summary).items():
        out.setdefault(k, v)  # manifest wins (config also has `seed`)
    for k, v in flatten({k: v for k, v in summary.items() if k != "config"}).items():
        out.setdefault(k, v)
    return out


def _frame(rows: list[dict]) -> pl.DataFrame:
    """Rows with differing keys and int/float mixes -> one frame with supertyped columns."""
    if not rows:
        return pl.DataFrame(schema=_KEY_SCHEMA)
    columns: dict[str, None] = {}
    for r in rows:
        columns.update(dict.fromkeys(r))
    data = {c: [r.get(c) for r in rows] for c in columns}
    series = []
    for c, values in data.items():
        if any(isinstance(v, float) for v in values) and all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            values = [None if v is None else float(v) for v in values]  # 3 and 3.5 in one column
        series.append(pl.Series(c, values, strict=False))
    return pl.DataFrame(series)


def build_runs(manifest_rows: list[dict], runs_dir: Path) -> pl.DataFrame:
    # A plain loop: the files are small and parsing holds the GIL, so threads only add
    # contention (measured: 10k runs in ~1.5 s serial vs ~4.8 s with 8 threads).
    runs_dir = Path(runs_dir)
    return _frame([_run_row(r, runs_dir) for r in manifest_rows])


# ---- curves table ------------------------------------------------------------------------

def _even(i: pl.Expr, n: pl.Expr, m: pl.Expr) -> pl.Expr:
    """Row i of n lies nearest to one of m (>= 2) evenly spaced positions k (n - 1) / (m - 1).

    All rows when n <= m; otherwise exactly m rows, the first and the last among them.
    """
    span = (n - 1).cast(pl.Float64)
    k = (i.cast(pl.Float64) * (m - 1) / span).round()
    # strict=False: n <= 1 gives 0/0 (its rows are kept by the first test anyway)
    return (n <= m) | (i == (k * span / (m - 1)).round().cast(pl.Int64, strict=False)).fill_null(False)


def _downsample(lf: pl.LazyFrame, max_rows: int, sparse: list[str]) -> pl.LazyFrame:
    """Keep <= max_rows rows per run_id, evenly spaced over its logged steps.

    A column logged on only some steps (probe-step attention logits, eval-step val_loss)
    gets an equal share of the budget, picked evenly among the rows where it is set, so
    thinning never drops it; dense columns need no share of their own.
    """
    n = pl.len().over("run_id")
    counts = {c: pl.col(c).is_not_null().sum().over("run_id") for c in sparse}
    n_sparse = pl.sum_horizontal([(cnt < n).cast(pl.Int64) for cnt in counts.values()]) if sparse else pl.lit(0)
    share = (pl.lit(max_rows) // (1 + n_sparse)).clip(lower_bound=2)
    keep = _even(pl.int_range(pl.len()).over("run_id"), n, share)
    for c, cnt in counts.items():
        has = pl.col(c).is_not_null()
        i_c = has.cast(pl.Int64).cum_sum().over("run_id") - 1
        keep = keep | (has & (cnt < n) & _even(i_c, cnt, share))
    return lf.filter((n <= max_rows) | keep)


def _union_schema(schemas: Iterable[dict]) -> dict[str, pl.DataType]:
    """Union of file schemas; per-layer columns ordered by layer number."""
    union: dict[str, pl.DataType] = {}
    for sch in schemas:
        for name, dtype in sch.items():
            union.setdefault(name, dtype)
    names = list(union)
    layers = sorted((n for n in names if _LAYER_COL.fullmatch(n)), key=lambda n: int(n[len("attn_logit_l"):]))
    if layers:
        at = names.index(layers[0]) if layers[0] in names else len(names)
        rest = [n for n in names if n not in set(layers)]
        at = sum(1 for n in names[:at] if n not in set(layers))
        names = rest[:at] + layers + rest[at:]
    return {n: union[n] for n in names}


def _scan(files: list[str], schema: dict | None) -> pl.LazyFrame:
    kw = {"schema": schema, "missing_columns": "insert"} if schema is not None else {}
    return pl.scan_parquet(files, glob=False, include_file_paths="_path", **kw)


def _read_metrics(files: dict[str, str], sample: list[str], max_rows: int) -> pl.DataFrame:
    """All metrics files, downsampled, with a run_id column.

    Fast path: one multi-file scan against the union schema of a few sampled files (one
    per scale x variant: depth decides the attn_logit_l{i} columns). If any file holds a
    column the sample missed, or a clashing type, fall back to one scan per distinct file
    schema and a diagonal concat.
    """
    path_to_run = pl.LazyFrame({"_path": list(files), "run_id": list(files.values())})

    def finish(lf: pl.LazyFrame) -> pl.LazyFrame:
        lf = lf.join(path_to_run, on="_path", how="left").drop("_path")
        return _downsample(lf, max_rows, [c for c in SPARSE_COLUMNS if c in lf.collect_schema().names()])

    try:
        schema = _union_schema(pl.read_parquet_schema(f) for f in sample)
        return finish(_scan(list(files), schema)).collect()
    except pl.exceptions.PolarsError:
        pass
    by_schema: dict[tuple, list[str]] = defaultdict(list)
    for f in files:
        by_schema[tuple(pl.read_parquet_schema(f).items())].append(f)
    parts = [finish(_scan(group, None)) for group in by_schema.values()]
    frame = pl.concat(parts, how="diagonal_relaxed").collect()
    return frame.select(list(_union_schema([frame.schema])))


def build_curves(manifest_rows: list[dict], runs_dir: Path, max_rows: int = MAX_CURVE_ROWS) -> pl.DataFrame:
    runs_dir = Path(runs_dir)
    present = [r for r in manifest_rows if (runs_dir / str(r["run_id"]) / "metrics.parquet").is_file()]
    keys = pl.DataFrame([{k: r.get(k) for k in KEY_COLUMNS} for r in present] or None,
                        schema=_KEY_SCHEMA, strict=False)
    if not present:
        return keys
    files = {str(runs_dir / str(r["run_id"]) / "metrics.parquet"): str(r["run_id"]) for r in present}
    sample = list({(r.get("scale"), r.get("variant")): f for r, f in zip(present, files)}.values())
    metrics = _read_metrics(files, sample, max_rows)
    # metrics' own `lr` is the scheduled LR at that step; the key column `lr` is the peak LR.
    metrics = metrics.rename({"lr": "lr_step"}) if "lr" in metrics.columns else metrics
    metrics = metrics.sort(["run_id", "step"] if "step" in metrics.columns else ["run_id"], maintain_order=True)
    # The same run may sit under several manifest rows (identical grid points): join, not map.
    return keys.join(metrics, on="run_id", how="inner", maintain_order="left_right")


def with_initial_logz(runs: pl.DataFrame, curves: pl.DataFrame) -> pl.DataFrame:
    """runs + logz_rms_init: the RMS over tokens of log Z at step 0 (sqrt of the first metrics
    row's unscaled z-loss), the start finding 2's drift is measured from."""
    if runs.is_empty() or not {"run_id", "step", "z_loss"} <= set(curves.columns):
        return runs
    first = (curves.filter(pl.col("step") == 0).unique("run_id", keep="first")
             .select("run_id", logz_rms_init=pl.col("z_loss").cast(pl.Float64).sqrt()))
    return runs.join(first, on="run_id", how="left", maintain_order="left")


def aggregate(manifest_rows: list[dict], runs_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(runs_df, curves_df) for one study's manifest rows (module docstring: the columns)."""
    manifest_rows = list(manifest_rows)
    runs, curves = build_runs(manifest_rows, Path(runs_dir)), build_curves(manifest_rows, Path(runs_dir))
    return with_outcome(with_initial_logz(runs, curves)), curves


def write_study_tables(manifest_rows: Iterable[dict], runs_dir: Path, out: Path,
                       curves_path: Path | None = None) -> tuple[Path, Path]:
    """Write runs.parquet and curves.parquet atomically; return their paths.

    write_study_tables(rows, runs_dir, out_dir) writes out_dir/{runs,curves}.parquet;
    write_study_tables(rows, runs_dir, runs_path, curves_path) writes the two given files.
    """
    runs, curves = aggregate(list(manifest_rows), Path(runs_dir))
    if curves_path is None:
        runs_path, curves_path = Path(out) / "runs.parquet", Path(out) / "curves.parquet"
    else:
        runs_path = Path(out)
    return write_parquet(runs_path, runs), write_parquet(curves_path, curves)
