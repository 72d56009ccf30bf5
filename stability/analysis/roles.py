"""What each variant of a study changes, read from the run configs (not from its name).

A claim about z-loss compares variants whose configs differ in `loss.z_loss` (and maybe
`optim.weight_decay`), whatever the study author called them.
"""
from __future__ import annotations

from typing import Any

import polars as pl

# Keys that vary with the grid point itself, or only change how a run is observed.
SCALE_KEYS = ("model.d_model", "model.n_layers", "model.head_dim")
IGNORED_KEYS = frozenset({
    "seed", "code_version", "optim.lr", *SCALE_KEYS,
    "train.log_every", "train.eval_every", "train.eval_batches", "train.probe_every", "train.probe_step",
    "train.checkpoint_every", "train.device", "train.precision", "train.compile", "train.threads",
    "train.grad_stats_window", "train.divergence_margin", "train.divergence_window",
    "train.stop_on_divergence", "data.cache_dir",
})
CONFIG_PREFIXES = ("model.", "optim.", "loss.", "train.", "data.")
VARIES = "<varies>"


def config_keys(runs: pl.DataFrame) -> list[str]:
    return [c for c in runs.columns if c.startswith(CONFIG_PREFIXES) and c not in IGNORED_KEYS]


def variant_configs(runs: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """variant -> {config key: value}; VARIES where a key is not constant within the variant."""
    keys = config_keys(runs)
    out: dict[str, dict[str, Any]] = {}
    if "variant" not in runs.columns:
        return out
    for (variant,), g in runs.group_by("variant", maintain_order=True):
        cfg = {}
        for k in keys:
            values = g[k].unique().to_list()
            cfg[k] = values[0] if len(values) == 1 else VARIES
        out[str(variant)] = cfg
    return out


def diff(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


def family(configs: dict[str, dict], reference: str, keys: set[str] | frozenset[str]) -> list[str]:
    """The reference plus every variant that differs from it only in `keys` (one-factor studies)."""
    if reference not in configs:
        return []
    ref = configs[reference]
    out = [reference]
    for name, cfg in configs.items():
        d = diff(cfg, ref)
        if name != reference and d and d <= set(keys):
            out.append(name)
    return out


def value(configs: dict[str, dict], variant: str, key: str, default: Any = None) -> Any:
    v = configs.get(variant, {}).get(key, default)
    return default if v is None else v


def scale_shapes(runs: pl.DataFrame) -> pl.DataFrame:
    """(scale, variant) -> d_model, n_layers, non_embedding_params (for width vs depth ladders)."""
    need = ["scale", "variant", "model.d_model", "model.n_layers"]
    if any(c not in runs.columns for c in need):
        return pl.DataFrame()
    params = (pl.col("non_embedding_params").cast(pl.Float64, strict=False).mean()
              if "non_embedding_params" in runs.columns else pl.lit(None, pl.Float64))
    return (runs.group_by("scale", "variant")
            .agg(pl.col("model.d_model").first(), pl.col("model.n_layers").first(), params.alias("params"))
            .sort("params", nulls_last=True))
