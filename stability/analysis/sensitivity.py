"""LR sensitivity (the paper's headline metric) and the optimal LR, per (scale, variant).

    sensitivity = mean over LRs eta of [ min(loss(eta), loss_0) - loss_star ]

loss(eta) is the final validation loss at peak LR eta, loss_0 the loss at initialisation
and loss_star the lowest final loss over the LR grid (Wortsman et al. 2023, Sec. 2.2). Every
failed run (diverged, NaN, or stalled: see FAIL_FRACTION) counts as loss_0. The paper caps
with min(loss, loss_0) and its failed runs end at or above loss_0; here gradient clipping
lets a failed run stall just below loss_0, and whether it is stopped by the divergence
detector (scored at loss_0) or runs on and stalls (scored at its own loss) would otherwise
change the metric. Capping every failure at loss_0 makes the sensitivity the same with
early stopping on or off.

Two LR sets per (study, scale): the full grid (`sensitivity`) and the LRs where at least
one run of any variant of the study trained (`sensitivity_trainable`), so one LR where
every variant fails cannot decide a comparison. Both are computed per seed
(`per_seed_sensitivity`) and then averaged over seeds; `sensitivity_lo/hi` are the min and
max over seeds. Comparisons between variants pair seeds (stability.analysis.verdict).
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl

SENSITIVITY_COLUMNS = {
    "study": pl.String, "scale": pl.String, "variant": pl.String, "non_embedding_params": pl.Float64,
    "n_lrs": pl.Int64, "n_seeds": pl.Int64, "sensitivity": pl.Float64, "sensitivity_lo": pl.Float64,
    "sensitivity_hi": pl.Float64, "sensitivity_trainable": pl.Float64, "n_lrs_trainable": pl.Int64,
    "best_lr": pl.Float64, "best_lr_fit": pl.Float64, "best_loss": pl.Float64,
    "init_loss": pl.Float64, "n_diverged": pl.Int64,
}
FIT_WINDOW = 5  # points around the best LR used by the quadratic fit (3 to 5 survive clipping)


def col(df: pl.DataFrame, name: str, dtype: pl.DataType = pl.Float64) -> pl.Expr:
    """df[name] cast to dtype, or a null column when the runs never wrote it."""
    return pl.col(name).cast(dtype, strict=False) if name in df.columns else pl.lit(None, dtype=dtype)


# A run that closed less than this fraction of the gap between loss_0 and the best final
# loss of its (scale, variant, seed) row did not train: it counts as failed. With gradient
# clipping, small models blown up by logit growth stall near loss_0 instead of producing
# NaNs; the paper's diverged runs also end there. Fixed a priori (half the gap), not tuned.
FAIL_FRACTION = 0.5


def with_outcome(runs: pl.DataFrame) -> pl.DataFrame:
    """Add `failed` and `loss_capped` (the sensitivity metric's loss) to a runs table.

    The aggregation calls this once per study (runs.parquet carries both columns); every
    analysis and figure reads them through `scored`.
    `failed`: diverged, stopped by the early warning (`stopped_by_warning`, train.early_warning:
    stop; a run predicted to fail and ended at K has no final loss to judge), no finite
    final loss, or stalled (see FAIL_FRACTION).
    `loss_capped`: init_loss for every failed run, else min(final, init) (nats; module
    docstring: why a stalled run is capped too).
    Both are null for a run without a finite init_loss (it never wrote a summary): without
    loss_0 it cannot be scored.
    """
    final = col(runs, "final_loss")
    init = col(runs, "init_loss")
    diverged = col(runs, "diverged", pl.Boolean).fill_null(False) | \
        col(runs, "stopped_by_warning", pl.Boolean).fill_null(False)
    finite = final.is_not_null() & final.is_finite()
    keys = [k for k in ("scale", "variant", "seed") if k in runs.columns]
    out = runs.with_columns(_final=final, _init=init, _blown=diverged | ~finite)
    best = pl.col("_final").filter(~pl.col("_blown")).min()
    best = best.over(keys) if keys else best
    stalled = pl.col("_final") > pl.col("_init") - FAIL_FRACTION * (pl.col("_init") - best)
    has_init = pl.col("_init").is_not_null() & pl.col("_init").is_finite()
    return (out.with_columns(failed=pl.when(has_init).then(pl.col("_blown") | stalled.fill_null(False)))
            .with_columns(loss_capped=pl.when(~has_init).then(None)
                          .when(pl.col("failed")).then(pl.col("_init"))
                          .otherwise(pl.min_horizontal("_final", "_init")))
            .drop("_final", "_init", "_blown"))


def scored(runs: pl.DataFrame) -> pl.DataFrame:
    """The runs that have an outcome (non-null `loss_capped`: a finite init_loss).

    runs: a runs table with the `with_outcome` columns, as the aggregation writes it. A
    runs.parquet aggregated before it carried them gets them here, by the same definition,
    so a finished study analyses without re-aggregating.
    """
    if not {"failed", "loss_capped"} <= set(runs.columns):
        runs = with_outcome(runs)
    return runs.filter(pl.col("loss_capped").is_not_null())


def optimal_lr(lrs: np.ndarray, losses: np.ndarray, failed: np.ndarray | None = None) -> tuple[float, float]:
    """(argmin LR, LR at the vertex of a quadratic fit of loss vs log10 LR); (nan, nan) when
    every LR failed or has no finite loss.

    The argmin is taken over the LRs that did not fail: a failed LR is never the best one,
    even where its capped loss is lowest (it is loss_0, not a trained loss). The fit uses up
    to FIT_WINDOW grid points centred on the best one, leaves out failed runs (their capped
    loss is a plateau, not a parabola), and needs >= 3 points and an upward-opening
    parabola; the vertex is clipped to the fitted points' LR range. Otherwise the fitted
    value falls back to the argmin.
    """
    order = np.argsort(lrs)
    lrs, losses = np.asarray(lrs, float)[order], np.asarray(losses, float)[order]
    failed = np.zeros(len(lrs), bool) if failed is None else np.asarray(failed, bool)[order]
    usable = np.flatnonzero(~failed & np.isfinite(losses))
    if not len(usable):
        return math.nan, math.nan
    best = int(usable[np.argmin(losses[usable])])
    best_lr = float(lrs[best])
    half = FIT_WINDOW // 2
    lo, hi = max(0, best - half), min(len(lrs), best + half + 1)
    keep = ~failed[lo:hi] & np.isfinite(losses[lo:hi])
    x, y = np.log10(lrs[lo:hi][keep]), losses[lo:hi][keep]
    if len(np.unique(x)) < 3:
        return best_lr, best_lr
    a, b, _ = np.polyfit(x, y, 2)
    if not (a > 0 and math.isfinite(b)):
        return best_lr, best_lr
    vertex = float(np.clip(-b / (2 * a), x.min(), x.max()))
    return best_lr, 10 ** vertex


PER_SEED_COLUMNS = {"study": pl.String, "scale": pl.String, "variant": pl.String, "seed": pl.Int64,
                    "sensitivity": pl.Float64, "sensitivity_trainable": pl.Float64, "n_lrs": pl.Int64,
                    "n_lrs_trainable": pl.Int64}


def trainable_lrs(scored: pl.DataFrame) -> pl.DataFrame:
    """(study, scale, lr) where at least one run of any variant or seed trained (not failed)."""
    return (scored.filter(~pl.col("failed")).select("study", "scale", "lr").unique())


def per_seed_sensitivity(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per (study, scale, variant, seed): sensitivity over the full LR grid and over
    the study's trainable LRs at that scale (PER_SEED_COLUMNS; nats). runs: see `scored`."""
    if runs.is_empty() or "init_loss" not in runs.columns:
        return pl.DataFrame(schema=PER_SEED_COLUMNS)
    df = scored(runs)
    df = df.with_columns(study=col(df, "study", pl.String))
    if df.is_empty():
        return pl.DataFrame(schema=PER_SEED_COLUMNS)
    keys = ["study", "scale", "variant", "seed"]
    gap = (pl.col("loss_capped") - pl.col("loss_capped").min()).mean()
    full = df.group_by(keys).agg(sensitivity=gap, n_lrs=pl.col("lr").n_unique())
    ok = df.join(trainable_lrs(df), on=["study", "scale", "lr"], how="semi")
    part = ok.group_by(keys).agg(sensitivity_trainable=gap, n_lrs_trainable=pl.col("lr").n_unique())
    out = full.join(part, on=keys, how="left").with_columns(
        pl.col("n_lrs_trainable").fill_null(0), pl.col("seed").cast(pl.Int64))
    return out.select(list(PER_SEED_COLUMNS)).cast(PER_SEED_COLUMNS).sort(keys)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def sensitivity_table(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per (scale, variant) with the SENSITIVITY_COLUMNS. runs: see `scored`."""
    if runs.is_empty() or "init_loss" not in runs.columns:
        return pl.DataFrame(schema=SENSITIVITY_COLUMNS)
    df = scored(runs).with_columns(non_embedding_params=col(runs, "non_embedding_params"),
                                   study=col(runs, "study", pl.String))
    if df.is_empty():
        return pl.DataFrame(schema=SENSITIVITY_COLUMNS)
    per_seed = per_seed_sensitivity(df).rename({"sensitivity": "sens"})
    rows = []
    for (study, scale, variant), g in df.group_by("study", "scale", "variant", maintain_order=True):
        s = per_seed.filter((pl.col("scale") == scale) & (pl.col("variant") == variant)
                            & (pl.col("study") == study))
        s, st, nt = s["sens"], s["sensitivity_trainable"], s["n_lrs_trainable"]
        # Optimal LR on the loss averaged over seeds (a run failing at one seed fails the LR).
        by_lr = (g.group_by("lr").agg(pl.col("loss_capped").mean(), pl.col("failed").any())
                 .sort("lr"))
        best_lr, best_lr_fit = optimal_lr(by_lr["lr"].to_numpy(), by_lr["loss_capped"].to_numpy(),
                                          by_lr["failed"].to_numpy())
        rows.append({
            "study": study, "scale": scale, "variant": variant,
            "non_embedding_params": g["non_embedding_params"].drop_nulls().mean(),
            "n_lrs": g["lr"].n_unique(), "n_seeds": g["seed"].n_unique(),
            "sensitivity": s.mean(), "sensitivity_lo": s.min(), "sensitivity_hi": s.max(),
            "sensitivity_trainable": st.mean(), "n_lrs_trainable": int(nt.max()) if len(nt) else 0,
            # null where every LR failed: no diverged LR is reported as a best LR
            "best_lr": _finite(best_lr), "best_lr_fit": _finite(best_lr_fit),
            "best_loss": by_lr.filter(~pl.col("failed"))["loss_capped"].min(),
            "init_loss": g["init_loss"].mean(), "n_diverged": int(g["failed"].sum()),
        })
    return (pl.DataFrame(rows, schema=SENSITIVITY_COLUMNS)
            .sort("variant", "non_embedding_params", "scale", nulls_last=True))
