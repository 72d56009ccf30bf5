"""The intervention leaderboard: every variant of a study ranked by measured stability, and
published claims about the interventions since 2023 checked as verdicts.

Per (variant, scale), from the seeds (each a full LR sweep; 95% t-intervals over seeds,
stability.analysis.verdict):

    sensitivity          LR sensitivity over the full grid (Wortsman et al. 2023, Sec. 2.2;
                         sensitivity.per_seed_sensitivity), nats
    max_stable_lr        the largest grid LR at which every seed trained (not `failed`,
                         sensitivity.with_outcome); max_stable_lr_any: at which any seed did
    best_loss            per seed the lowest final validation loss over the LRs that trained
                         (nats), then its mean
    *_slope              the trend with scale: per seed the slope vs log10 non-embedding
                         parameters (of sensitivity, of log10 of the seed's largest trained
                         LR, of best_loss), then its mean and interval; null with one scale
    interventions        the registered interventions on in the variant (stability.interventions;
                         a user's, named in the runs' `plugins`, too)
    changes              the config keys where the variant differs from the study's reference
    grid_max_lr          the top of the LR grid: a max_stable_lr equal to it is a lower bound
    run_ids              the runs each number comes from

Rank: by sensitivity at the largest scale (lower is more stable), then by max_stable_lr
(higher first), then best_loss.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from .. import interventions
from . import roles
from .sensitivity import col, per_seed_sensitivity, scored
from .verdict import (INCONCLUSIVE, NOT_REPRODUCED, NOT_RUN, REPRODUCED, Interval, at_most, combine, directional,
                      subcheck, t_interval)

TABLE_COLUMNS = {
    "rank": pl.Int64, "variant": pl.String, "interventions": pl.String, "changes": pl.String, "scale": pl.String,
    "grid_max_lr": pl.Float64,
    "non_embedding_params": pl.Float64, "n_seeds": pl.Int64, "n_lrs": pl.Int64,
    "sensitivity": pl.Float64, "sensitivity_lo": pl.Float64, "sensitivity_hi": pl.Float64,
    "max_stable_lr": pl.Float64, "max_stable_lr_any": pl.Float64,
    "best_loss": pl.Float64, "best_loss_lo": pl.Float64, "best_loss_hi": pl.Float64,
    "sensitivity_slope": pl.Float64, "sensitivity_slope_lo": pl.Float64, "sensitivity_slope_hi": pl.Float64,
    "log10_max_stable_lr_slope": pl.Float64, "log10_max_stable_lr_slope_lo": pl.Float64,
    "log10_max_stable_lr_slope_hi": pl.Float64,
    "best_loss_slope": pl.Float64, "best_loss_slope_lo": pl.Float64, "best_loss_slope_hi": pl.Float64,
    "run_ids": pl.List(pl.String),
}

# ---- thresholds, fixed before any leaderboard run, each with its reason ----------------
# No-effect band on sensitivity and loss (nats): arms with no mechanism moved sensitivity by
# 0.015-0.017 nats in the earlier combined study (the science review, finding 11's band).
BAND_NATS = 0.02
# Rybakov et al. 2024 (arXiv 2410.16682): qk-norm with soft-capping tolerates about 1.5x the
# highest stable LR of qk-norm alone.
LR_RATIO = 1.5
# A head's max logit counts as held at tau within this relative tolerance: qk-clip rescales
# after the step, and the next step's update may overshoot before the next clip.
CLIP_TOLERANCE = 0.1


def interventions_on(cfg: dict[str, Any]) -> str:
    """'name(value, ...)' for each registered intervention on in a flat config, in registry order."""
    parts = []
    for iv in interventions.REGISTRY.values():
        if iv.on_in(cfg):
            vals = [cfg.get(k) if cfg.get(k) is not None else interventions.default(k) for k in iv.keys]
            parts.append(f"{iv.name}({', '.join(str(v) for v in vals)})")
    return ", ".join(parts) or "none"


def per_seed(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per (variant, scale, seed): sensitivity (full grid), the largest LR that
    trained, the best loss over LRs that trained, the size and the run ids.
    runs: a study's runs table (aggregate output)."""
    df = scored(runs).with_columns(study=pl.lit("leaderboard"),
                                   non_embedding_params=col(runs, "non_embedding_params"))
    keys = ["variant", "scale", "seed"]
    sens = per_seed_sensitivity(df).select(*keys, "sensitivity", "n_lrs")
    ok = ~pl.col("failed")
    agg = df.group_by(keys).agg(
        max_lr_trained=pl.col("lr").filter(ok).max(),
        best_loss=pl.col("final_loss").filter(ok).min(),
        non_embedding_params=pl.col("non_embedding_params").mean(),
        run_ids=pl.col("run_id").sort(),
    )
    return agg.join(sens, on=keys, how="left").with_columns(pl.col("seed").cast(pl.Int64)).sort(keys)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    keep = np.isfinite(x) & np.isfinite(y)
    if len(np.unique(x[keep])) < 2:
        return math.nan
    return float(np.polyfit(x[keep], y[keep], 1)[0])


def trends(seeds: pl.DataFrame) -> dict[str, dict[str, Interval]]:
    """variant -> {quantity: t-interval over seeds of the slope vs log10 params}."""
    out: dict[str, dict[str, Interval]] = {}
    for (variant,), g in seeds.group_by("variant", maintain_order=True):
        slopes: dict[str, list[float]] = {"sensitivity": [], "log10_max_stable_lr": [], "best_loss": []}
        for _, s in g.group_by("seed", maintain_order=True):
            x = np.log10(s["non_embedding_params"].cast(pl.Float64).to_numpy())
            slopes["sensitivity"].append(_slope(x, s["sensitivity"].cast(pl.Float64).to_numpy()))
            lr = s["max_lr_trained"].cast(pl.Float64).fill_null(math.nan).to_numpy()
            slopes["log10_max_stable_lr"].append(_slope(x, np.log10(lr)))
            slopes["best_loss"].append(_slope(x, s["best_loss"].cast(pl.Float64).fill_null(math.nan).to_numpy()))
        out[str(variant)] = {k: t_interval(v) for k, v in slopes.items()}
    return out


def _finite(v: float) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def changes_from(configs: dict[str, dict[str, Any]], variant: str, reference: str | None) -> str:
    """'key=value, ...' where `variant`'s config differs from `reference`'s ('' for itself or none)."""
    if reference not in configs or variant == reference:
        return ""
    cfg, ref = configs.get(variant, {}), configs[reference]
    return ", ".join(f"{k}={cfg.get(k)}" for k in sorted(roles.diff(cfg, ref)))


def leaderboard_table(runs: pl.DataFrame, reference: str | None = None,
                      seeds: pl.DataFrame | None = None) -> pl.DataFrame:
    """The leaderboard (TABLE_COLUMNS), one row per (variant, scale), ranked (module docstring).
    `changes` lists each variant's config keys that differ from `reference` (the study's);
    `seeds` is per_seed(runs) when the caller has it already."""
    if runs.is_empty() or "init_loss" not in runs.columns:
        return pl.DataFrame(schema=TABLE_COLUMNS)
    interventions.load_plugins_of(runs)  # the registry names a user's interventions too
    seeds = per_seed(runs) if seeds is None else seeds
    configs = roles.variant_configs(runs)
    grid_top = runs["lr"].max()
    slope = trends(seeds)
    rows = []
    for (variant, scale), g in seeds.group_by("variant", "scale", maintain_order=True):
        sens, best = t_interval(g["sensitivity"].to_list()), t_interval(g["best_loss"].fill_null(math.nan).to_list())
        trained = g["max_lr_trained"]
        t = slope[str(variant)]
        rows.append({
            "variant": variant, "interventions": interventions_on(configs.get(str(variant), {})),
            "changes": changes_from(configs, str(variant), reference), "scale": scale, "grid_max_lr": grid_top,
            "non_embedding_params": g["non_embedding_params"].mean(), "n_seeds": g.height,
            "n_lrs": int(g["n_lrs"].max()),
            "sensitivity": _finite(sens.estimate), "sensitivity_lo": _finite(sens.lo), "sensitivity_hi": _finite(sens.hi),
            # every seed trained up to it: a null (a seed where nothing trained) leaves none
            "max_stable_lr": None if trained.null_count() else trained.min(),
            "max_stable_lr_any": trained.max(),
            "best_loss": _finite(best.estimate), "best_loss_lo": _finite(best.lo), "best_loss_hi": _finite(best.hi),
            **{f"{q}_slope{s}": _finite(getattr(t[q], a)) for q in t for s, a in (("", "estimate"), ("_lo", "lo"),
                                                                                    ("_hi", "hi"))},
            "run_ids": sorted(r for ids in g["run_ids"] for r in ids),
            "rank": None,
        })
    table = pl.DataFrame(rows, schema=TABLE_COLUMNS)
    top = table.sort("non_embedding_params", nulls_last=True)["scale"][-1]  # sizes differ a little by variant
    order = (table.filter(pl.col("scale") == top)
             .sort(["sensitivity", "max_stable_lr", "best_loss"], descending=[False, True, False], nulls_last=True))
    rank = {v: i + 1 for i, v in enumerate(order["variant"])}
    return (table.with_columns(rank=pl.col("variant").replace_strict(rank, default=None, return_dtype=pl.Int64))
            .sort(["rank", "non_embedding_params"], nulls_last=True))


# ---- published claims ------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """A published claim about an intervention, checked on the leaderboard's runs."""
    id: str
    statement: str
    source: str
    check: Callable[["Data"], dict]


@dataclass
class Data:
    """What the claims read: the scored runs, per-seed rows and each variant's config."""
    runs: pl.DataFrame
    seeds: pl.DataFrame
    configs: dict[str, dict[str, Any]]

    def value(self, variant: str, key: str) -> Any:
        v = self.configs.get(variant, {}).get(key)
        if v is not None:
            return v
        try:
            return interventions.default(key)
        except KeyError:  # a key no registered intervention declares: no variant can set it
            return None

    def pair(self, keys: set[str], a: Callable[[str], bool], b: Callable[[str], bool]) -> tuple[str, str] | None:
        """The first (a, b) variants that differ only in `keys` (a subset of), a matching `a`, b `b`."""
        for va in self.configs:
            for vb in self.configs:
                d = roles.diff(self.configs[va], self.configs[vb])
                if va != vb and d and d <= keys and a(va) and b(vb):
                    return va, vb
        return None

    def largest_common_scale(self, *variants: str) -> str | None:
        s = self.seeds.filter(pl.col("variant").is_in(list(variants)))
        common = s.group_by("scale").agg(pl.col("variant").n_unique().alias("n"),
                                         pl.col("non_embedding_params").mean())
        common = common.filter(pl.col("n") == len(variants)).sort("non_embedding_params")
        return common["scale"][-1] if common.height else None

    def paired_seeds(self, a: str, b: str, scale: str, column: str) -> list[float]:
        """a - b of a per-seed column at one scale, paired by seed."""
        sa = self.seeds.filter((pl.col("variant") == a) & (pl.col("scale") == scale)).select("seed", x=column)
        sb = self.seeds.filter((pl.col("variant") == b) & (pl.col("scale") == scale)).select("seed", y=column)
        j = sa.join(sb, on="seed").sort("seed")
        return [float(x) - float(y) if x is not None and y is not None else math.nan for x, y in zip(j["x"], j["y"])]


def _on(d: Data, key: str) -> Callable[[str], bool]:
    return lambda v: bool(d.value(v, key))


def _off(d: Data, key: str) -> Callable[[str], bool]:
    return lambda v: not d.value(v, key)


def _not_run(why: str) -> dict:
    return {"outcome": NOT_RUN, "note": why, "subchecks": {}}


def _log_lr_steps(d: Data, a: str, b: str, scale: str) -> list[float]:
    """Per seed, log10(largest trained LR of a / of b); a seed where one never trained is dropped."""
    return [x for x in d.paired_seeds(a, b, scale, "log10_lr") if math.isfinite(x)]


def softcap_raises_stable_lr(d: Data) -> dict:
    pair = d.pair({"model.attn_softcap"}, lambda v: _on(d, "model.attn_softcap")(v) and d.value(v, "model.qk_layernorm") != "none",
                  lambda v: _off(d, "model.attn_softcap")(v) and d.value(v, "model.qk_layernorm") != "none")
    if pair is None:
        return _not_run("needs two variants with qk-layernorm on that differ only in model.attn_softcap")
    a, b = pair
    scale = d.largest_common_scale(a, b)
    iv = t_interval(_log_lr_steps(d, a, b, scale))
    step, target = _grid_step(d, scale), math.log10(LR_RATIO)
    # The largest LR that trained is read on the grid: a ratio below one grid step shows as 1x.
    if iv.n and iv.lo >= target:
        outcome = REPRODUCED
    elif iv.n and (iv.hi < 0 or (iv.hi < target and step <= target)):
        outcome = NOT_REPRODUCED  # lower, or a grid fine enough to see 1.5x saw less
    else:
        outcome = INCONCLUSIVE  # includes "the same grid LR" on a grid coarser than 1.5x
    return {"outcome": outcome, "variants": [a, b], "scale": scale,
            "subchecks": {"stable_lr_ratio": subcheck(outcome, iv, note=f"log10 of the ratio of the largest LR that "
                                                      f"trained, per seed; at least log10 {LR_RATIO} = {target:.3f}; "
                                                      f"grid step {step:.2f} decades", grid_step_decades=step)}}


def _grid_step(d: Data, scale: str) -> float:
    lrs = np.log10(sorted(d.runs.filter(pl.col("scale") == scale)["lr"].unique().to_list()))
    return float(np.diff(lrs).max()) if len(lrs) > 1 else 0.0


def qk_clip_bounds_logits(d: Data) -> dict:
    """Two sub-checks at the largest common scale, paired by (LR, seed):

    max_logit_at_tau  the clipped run's max attention logit / tau - 1, at most CLIP_TOLERANCE,
                      over the pairs where the clipped run trained and the unclipped run's max
                      logit exceeded tau (where the clip has work to do). The first leaderboard
                      run read every pair where both trained; there the unclipped logits stayed
                      below tau, so that read could not fail: it was changed after that run, and
                      docs/leaderboard.md says so.
    no_loss_penalty   final loss with minus without qk-clip, at most BAND_NATS, over the pairs
                      where both trained."""
    pair = d.pair({"model.qk_clip"}, _on(d, "model.qk_clip"), _off(d, "model.qk_clip"))
    if pair is None:
        return _not_run("needs two variants that differ only in model.qk_clip")
    a, b = pair
    scale = d.largest_common_scale(a, b)
    tau = float(d.value(a, "model.qk_clip"))
    at = d.runs.filter((pl.col("scale") == scale) & pl.col("variant").is_in([a, b]))
    side = lambda v, **cols: at.filter(pl.col("variant") == v).select("lr", "seed", **cols)
    pairs = side(a, failed_a="failed", logit_a=pl.col("max_attn_logit").cast(pl.Float64), loss_a="final_loss").join(
        side(b, failed_b="failed", logit_b=pl.col("max_attn_logit").cast(pl.Float64), loss_b="final_loss"),
        on=["lr", "seed"])
    worked = pairs.filter(~pl.col("failed_a") & (pl.col("logit_b") > tau))
    ratio = t_interval((worked["logit_a"] / tau - 1).to_list())
    bound = at_most(ratio, CLIP_TOLERANCE) if worked.height else NOT_RUN
    both = pairs.filter(~pl.col("failed_a") & ~pl.col("failed_b"))
    penalty = t_interval((both["loss_a"] - both["loss_b"]).to_list())
    no_penalty = at_most(penalty, BAND_NATS) if both.height else NOT_RUN
    subs = {"max_logit_at_tau": subcheck(bound, ratio, note=f"max attention logit / tau - 1 (tau {tau:g}) over runs "
                                         f"that trained with qk-clip where the run without it passed tau; at most "
                                         f"{CLIP_TOLERANCE}", tau=tau, lrs=sorted(set(worked["lr"]))),
            "no_loss_penalty": subcheck(no_penalty, penalty, note=f"final loss with qk-clip minus without, paired by "
                                        f"(LR, seed) where both trained; at most {BAND_NATS} nats")}
    return {"outcome": combine({k: v["outcome"] for k, v in subs.items()}), "variants": [a, b], "scale": scale,
            "subchecks": subs, "note": "Revised after the first leaderboard run: its bound sub-check read every "
            "(LR, seed) where both variants trained, where the logits without qk-clip stayed below tau, so it could "
            "not fail (it read reproduced); it now reads the runs where the clip had work to do."}


def _paired_claim(d: Data, pair: tuple[str, str] | None, missing: str, column: str,
                  decide: Callable[[Interval], str], name: str, note: str) -> dict:
    """A claim decided on one per-seed column: `pair` (x, y) gives x - y paired by seed at
    their largest common scale, decided by `decide`; not run when `pair` is None."""
    if pair is None:
        return _not_run(missing)
    x, y = pair
    scale = d.largest_common_scale(x, y)
    iv = t_interval(d.paired_seeds(x, y, scale, column))
    outcome = decide(iv)
    return {"outcome": outcome, "variants": [x, y], "scale": scale, "subchecks": {name: subcheck(outcome, iv, note=note)}}


def atan2_removes_eps_collapse(d: Data) -> dict:
    pair = d.pair({"optim.algorithm", "optim.eps"}, lambda v: d.value(v, "optim.algorithm") == "adamw"
                  and d.value(v, "optim.eps") >= 1e-4, lambda v: d.value(v, "optim.algorithm") == "adam_atan2")
    return _paired_claim(d, pair, "needs an adam_atan2 variant and an AdamW variant with a large epsilon (>= 1e-4) "
                         "that differ only in optim.algorithm and optim.eps", "best_loss",
                         lambda iv: directional(iv, BAND_NATS), "loss_recovered",
                         f"best loss of AdamW at the large epsilon minus Adam-atan2's, paired by seed; above 0 "
                         f"(band {BAND_NATS} nats)")


def softcap_matches_qk_layernorm(d: Data) -> dict:
    pair = d.pair({"model.attn_softcap", "model.qk_layernorm"},
                  lambda v: _on(d, "model.attn_softcap")(v) and d.value(v, "model.qk_layernorm") == "none",
                  lambda v: _off(d, "model.attn_softcap")(v) and d.value(v, "model.qk_layernorm") != "none")
    return _paired_claim(d, pair, "needs a soft-cap variant without qk-layernorm and a qk-layernorm variant without "
                         "soft-cap, otherwise equal", "sensitivity", lambda iv: at_most(iv, BAND_NATS),
                         "sensitivity_gap", f"LR sensitivity with soft-cap alone minus with qk-layernorm alone, "
                         f"paired by seed; at most {BAND_NATS} nats")


CLAIMS = (
    Claim("qk_norm_softcap_lr", "qk-layernorm with attention soft-capping tolerates about 1.5x the highest stable LR "
          "of qk-layernorm alone", "Rybakov et al. 2024, arXiv 2410.16682", softcap_raises_stable_lr),
    Claim("qk_clip_bounds_logits", "QK-clip holds the max attention logit at its threshold without a loss penalty, "
          "at LRs where the model also trains without it", "Kimi Team 2025 (Kimi K2, MuonClip), arXiv 2507.20534",
          qk_clip_bounds_logits),
    Claim("adam_atan2_eps", "Adam-atan2, having no epsilon, does not suffer the epsilon-driven update collapse: it "
          "trains better than AdamW whose epsilon is near the gradient RMS", "Everett et al. 2024, arXiv 2407.05872",
          atan2_removes_eps_collapse),
    Claim("softcap_vs_qk_norm", "attention soft-capping alone lowers LR sensitivity as much as qk-layernorm",
          "Gemma Team 2024 (Gemma 2, arXiv 2408.00118) uses soft-capping in place of qk-norm; Wortsman et al. 2023 "
          "Sec. 3.1 for qk-layernorm", softcap_matches_qk_layernorm),
)


def check_claims(runs: pl.DataFrame, seeds: pl.DataFrame | None = None) -> list[dict]:
    """Every CLAIMS entry checked on a leaderboard study's runs: {id, statement, source,
    outcome, variants, scale, subchecks, note}; `seeds` as in leaderboard_table."""
    if runs.is_empty() or "init_loss" not in runs.columns:
        return [{"id": c.id, "statement": c.statement, "source": c.source, **_not_run("no finished runs")}
                for c in CLAIMS]
    interventions.load_plugins_of(runs)
    seeds = (per_seed(runs) if seeds is None else seeds).with_columns(
        log10_lr=pl.col("max_lr_trained").cast(pl.Float64).log10())
    data = Data(scored(runs), seeds, roles.variant_configs(runs))
    out = []
    for c in CLAIMS:
        res = c.check(data)
        out.append({"id": c.id, "statement": c.statement, "source": c.source, "note": "", **res})
    return out
