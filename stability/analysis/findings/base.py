"""What a paper finding is (one `Finding` object) and what every check reads (`Ctx`).

A Finding holds everything the project knows about one of the paper's findings: its
number and title, the paper's claim with the section or figure it comes from, the measured
quantity, the figures that show it, the decision rule in words, every threshold with the
reason it was fixed (before any data), and the check that turns a study's tables into a
claim record. The findings page, figure planning, the claims schema and the forecast read
these objects; nothing else restates them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import polars as pl

from .. import roles
from ..sensitivity import col, per_seed_sensitivity, scored
from ..verdict import (INCONCLUSIVE, NOT_REPRODUCED, NOT_RUN, OUTCOMES, REPRODUCED, Interval, t_interval)


@dataclass(frozen=True)
class Threshold:
    """A number a decision rule compares against, with the reason it has this value."""

    value: float
    reason: str


@dataclass(frozen=True)
class Finding:
    """One paper finding (see the module docstring). `check(ctx)` returns a claim record."""

    number: int
    title: str
    claim: str  # the paper's claim, quoted or closely paraphrased
    source: str  # section / figure of Wortsman et al. 2023 (arXiv 2309.14322)
    quantity: str  # what is measured, in words with units
    rule: str  # the decision rule, in words
    figures: tuple[str, ...]
    check: Callable[["Ctx"], dict]
    thresholds: dict[str, Threshold] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The registry entry as data (for claims.json and the findings page)."""
        return {"finding": self.number, "title": self.title, "statement": self.claim, "source": self.source,
                "quantity": self.quantity, "rule": self.rule,
                "thresholds": {k: {"value": t.value, "reason": t.reason} for k, t in self.thresholds.items()}}


REGISTRY: dict[int, Finding] = {}


def register(f: Finding) -> Finding:
    if f.number in REGISTRY:
        raise ValueError(f"finding {f.number} registered twice")
    REGISTRY[f.number] = f
    return f


def result(finding: int, outcome: str, measured: dict | None = None, note: str = "",
           subchecks: dict[str, dict] | None = None, effect: Interval | None = None,
           effect_unit: str = "", n_seeds: int | None = None) -> dict[str, Any]:
    """A claim record: the registry entry plus what this study measured and concluded.

    outcome: one of verdict.OUTCOMES; subchecks: name -> verdict.subcheck(...) record;
    effect: the headline interval shown on the findings page (unit in effect_unit).
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {OUTCOMES}")
    base = REGISTRY[finding].describe() if finding in REGISTRY else {"finding": finding}
    out = {**base, "outcome": outcome, "measured": measured or {}, "note": note,
           "subchecks": subchecks or {}, "n_seeds": n_seeds}
    if effect is not None:
        out["effect"] = {**effect.as_dict(), "unit": effect_unit}
    return out


def not_run(finding: int, note: str, measured: dict | None = None) -> dict[str, Any]:
    """The study lacks the runs or variants the check needs."""
    return result(finding, NOT_RUN, measured, note)


def inconclusive(finding: int, note: str, measured: dict | None = None, **kw) -> dict[str, Any]:
    """The runs exist but cannot decide (one LR, every run failed, one scale for a trend)."""
    return result(finding, INCONCLUSIVE, measured, note, **kw)


def from_bool(ok: bool | None) -> str:
    return {True: REPRODUCED, False: NOT_REPRODUCED}.get(ok, NOT_RUN)


def frac(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


# ---- context -----------------------------------------------------------------------------

class Ctx:
    """A study's tables plus the lookups every check needs.

    runs: runs.parquet's scored runs, with `failed` and `loss_capped` (sensitivity.scored);
    sens: sensitivity.parquet; seeds: per_seed_sensitivity(runs); fits, forecast: as written
    by the analysis. Roles (which variant turns qk-layernorm off...) come from the run
    configs (roles.py), not from variant names.
    """

    def __init__(self, info: Any, runs: pl.DataFrame, sens: pl.DataFrame, fits: pl.DataFrame | None,
                 forecast: dict | None):
        get = (lambda k, d=None: info.get(k, d)) if isinstance(info, dict) else (lambda k, d=None: getattr(info, k, d))
        self.name = get("name", "")
        self.findings = list(get("findings", []) or [])
        self.reference = get("reference", None)
        self.options = dict(get("options", {}) or {})
        has_runs = not runs.is_empty() and "init_loss" in runs.columns
        self.runs = scored(runs) if has_runs else pl.DataFrame()
        self.sens = sens
        self.seeds = per_seed_sensitivity(self.runs) if has_runs else pl.DataFrame()
        self.fits = fits if fits is not None else pl.DataFrame()
        self.forecast = forecast or {}
        self.configs = roles.variant_configs(self.runs) if has_runs else {}
        if self.reference not in self.configs and self.configs:
            self.reference = next(iter(self.configs))
        self.scale_order = (self.sens.sort("non_embedding_params")["scale"].unique(maintain_order=True).to_list()
                            if not sens.is_empty() else [])

    def cfg(self, variant: str, key: str, default: Any = None) -> Any:
        return roles.value(self.configs, variant, key, default)

    def variants_where(self, pred: Callable[[dict], bool]) -> list[str]:
        return [v for v, c in self.configs.items() if pred(c)]

    def by_scale(self, variant: str, column: str = "sensitivity") -> dict[str, float]:
        """scale -> a sensitivity.parquet column (sensitivity, best_lr_fit, best_loss...) of one variant."""
        if self.sens.is_empty() or column not in self.sens.columns:
            return {}
        rows = self.sens.filter(pl.col("variant") == variant)
        return {s: v for s, v in zip(rows["scale"], rows[column]) if v is not None}

    def lrs(self, variant: str) -> set[float]:
        return set(self.runs.filter(pl.col("variant") == variant)["lr"].to_list())

    def n_seeds(self, *variants: str) -> int:
        df = self.runs.filter(pl.col("variant").is_in(list(variants))) if variants else self.runs
        return int(df["seed"].n_unique()) if df.height else 0

    def per_scale(self, variant: str, column: str, lr: float | None = None,
                  stable_only: bool = False) -> dict[str, float]:
        """Mean over seeds (and LRs unless lr is given) of a runs column, per scale."""
        if column not in self.runs.columns:
            return {}
        df = self.runs.filter(pl.col("variant") == variant)
        if lr is not None:
            df = df.filter(pl.col("lr") == lr)
        if stable_only:
            df = df.filter(~pl.col("failed"))
        df = df.with_columns(_x=col(df, column)).filter(pl.col("_x").is_not_null() & pl.col("_x").is_finite())
        g = df.group_by("scale").agg(pl.col("_x").mean())
        return dict(zip(g["scale"], g["_x"]))

    def paired(self, a: str, b: str, column: str = "sensitivity_trainable",
               scales: list[str] | None = None) -> list[dict[str, Any]]:
        """Per (scale, seed) present in both variants: {scale, seed, a, b, diff = b - a} of a
        per-seed sensitivity column (nats). Seeds pair runs with the same data order and init."""
        if self.seeds.is_empty():
            return []
        x = self.seeds.filter(pl.col("variant") == a).select("scale", "seed", pl.col(column).alias("a"))
        y = self.seeds.filter(pl.col("variant") == b).select("scale", "seed", pl.col(column).alias("b"))
        j = x.join(y, on=["scale", "seed"]).drop_nulls(["a", "b"])
        if scales is not None:
            j = j.filter(pl.col("scale").is_in(scales))
        order = {s: i for i, s in enumerate(self.scale_order)}
        rows = sorted(j.iter_rows(named=True), key=lambda r: (order.get(r["scale"], 1 << 30), r["scale"], r["seed"]))
        return [{**r, "diff": r["b"] - r["a"]} for r in rows if math.isfinite(r["a"]) and math.isfinite(r["b"])]

    def paired_effect(self, better: str, worse: str, column: str = "sensitivity_trainable",
                      scales: list[str] | None = None) -> tuple[Interval, list[dict[str, Any]]]:
        """How much lower `better`'s sensitivity is than `worse`'s: the t-interval over
        (scale, seed) pairs of worse - better (nats; > 0 means `better` is lower)."""
        pairs = self.paired(better, worse, column, scales)
        return t_interval(p["diff"] for p in pairs), pairs

    def ordered(self, scales: set[str] | list[str]) -> list[str]:
        scales = set(scales)
        return [s for s in self.scale_order if s in scales] + sorted(scales - set(self.scale_order))


def one_factor(ctx: Ctx, keys: set[str], pred: Callable[[dict], bool]) -> tuple[list[str], str]:
    """Variants matching pred, preferring those that differ from the reference only in keys."""
    fam = [v for v in roles.family(ctx.configs, ctx.reference, keys) if pred(ctx.configs[v])]
    if fam:
        return fam, ""
    anyv = ctx.variants_where(pred)
    return anyv, ("not a one-factor comparison: these variants differ from the reference in more than "
                  + ", ".join(sorted(keys))) if anyv else ""


def by_value(ctx: Ctx, key: str, variants: list[str]) -> dict[Any, str]:
    """config value -> first variant holding it."""
    out: dict[Any, str] = {}
    for v in variants:
        val = ctx.cfg(v, key)
        if val is not None and val != roles.VARIES:
            out.setdefault(val, v)
    return out


def compare_sensitivity(ctx: Ctx, better: str, worse: str) -> dict[str, Any]:
    """Per common scale: is `better`'s mean sensitivity lower than `worse`'s (both LR sets)?"""
    a, b = ctx.by_scale(better), ctx.by_scale(worse)
    at, bt = ctx.by_scale(better, "sensitivity_trainable"), ctx.by_scale(worse, "sensitivity_trainable")
    scales = ctx.ordered(set(a) & set(b))
    lower = [a[s] < b[s] for s in scales]
    return {"scales": scales, f"sensitivity_{better}": [a[s] for s in scales],
            f"sensitivity_{worse}": [b[s] for s in scales],
            f"sensitivity_trainable_{better}": [at.get(s) for s in scales],
            f"sensitivity_trainable_{worse}": [bt.get(s) for s in scales], "n_scales": len(scales),
            "n_lower": sum(lower), "frac_lower": frac(lower)}
