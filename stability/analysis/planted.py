"""A synthetic study with planted, known answers: for tests and for previewing figures.

No training happens: each run's summary numbers come from closed-form "physics" chosen so
that every paper finding holds (or, with `break_findings`, fails) by construction:

  loss(N, lr)   = best(N) + k * (log10 lr - log10 lr*)^2, capped at init when a run fails
  best(N)       = 3 - 0.2 * log10(N / N0)      (+ 0.2 per decade of qk_kappa above 100)
  k             = 0.05, x1.1 without qk-ln, x1.5 coupled decay, x(1 + 0.5 (1 + x)) short warm-up,
                  + 0.03 per doubling of depth beyond 2 layers; x = log10(N / N0)
  lr*           = 1e-2 * (N / N0)^-0.5 (standard), 1e-2 (muParam)
  log10 logit   = 1 + (log10 lr + 3) + 0.3 x + 0.25 x^2 without qk-ln, else 0.5 + 0.1 x;
                  log10 kappa under the transplant. A run fails when the logit > 1e4.
  RMS log Z     = 5.9 at step 0, growing by g = 1 + 2 (log10 lr + 3) nats without z-loss and decay
                  (those runs fail at lr >= 0.1), g / 2 with decay only, g / 4 with z-loss
  grad RMS      = 1e-3 (N / N0)^-1 (lr / 1e-3)^-0.5 ; update RMS = 0.2 g / (g + eps)
  eps harm      = + eps_harm * eps / (g + eps) nats of final loss (0 unless eps_harm is set)
  zero layers   = the bigram model of finding 9: best 3 + BIGRAM_GAP at any width (worse
                  than the N0 Transformer below kappa ~ 3e3, better than it at kappa = 1e4),
                  lr* = 1e-2, no attention or block-0 signals

`effect` scales every variant's departure of k from the reference's (1 = as above, 0 = no
variant effect, < 0 = the opposite effect); `noise_sd` adds seeded Gaussian noise (nats) to
each run's final loss, so a planted effect can be put above or below the seed spread;
`logit_growth` scales the growth of log10 logit without qk-ln over its value at (N0, lr 1e-3)
(1 = as above; 0.5 keeps every run below 1e4, so none fails).
`depth_effect` e raises the depth term to k0 = 0.05 (1 + 0.6 log2(L / 2))^e (1 = as above,
0 = depth adds nothing, < 0 = depth lowers k); `mup_effect` m makes muParam's optimum
lr* = 1e-2 (N / N0)^(-0.5 (1 - m)) (1 = fixed, 0 = drifts as standard's, < 0 = faster).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from .sensitivity import with_outcome

N0 = 12 * 2 * 64 ** 2  # the smallest planted model: d_model 64, 2 layers
DEFAULT_SCALES = {"s0": (64, 2), "s1": (128, 2), "s2": (256, 2), "s3": (512, 2)}
DEFAULT_LRS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
BASE_CONFIG = {
    "model.d_model": 64, "model.n_layers": 2, "model.head_dim": 32, "model.qk_layernorm": "per_head",
    "model.qk_kappa": 0.0, "model.parametrization": "standard", "optim.lr": 1e-2, "optim.warmup_steps": 50,
    "optim.weight_decay": 1e-4, "optim.independent_weight_decay": True, "optim.eps": 1e-8, "loss.z_loss": 1e-4,
    "train.steps": 300, "train.batch_size": 32, "train.log_every": 30, "seed": 0,
}
MITIGATION_VARIANTS = {
    "reference": {},
    "no_qk_ln": {"model.qk_layernorm": "none"},
    "no_z_loss": {"loss.z_loss": 0.0, "optim.weight_decay": 0.0},
    "coupled_decay": {"optim.independent_weight_decay": False, "optim.weight_decay": 0.1},
    "short_warmup": {"optim.warmup_steps": 5},
}
INIT_LOSS = 5.5
LOGZ_INIT = 5.9  # RMS log Z at step 0: about log(256) plus the spread of the initial logits
LOGIT_FAIL = 1e4
BIGRAM_GAP = 0.3  # nats above the smallest planted Transformer's best loss


def params(d_model: int, n_layers: int) -> float:
    return float(12 * n_layers * d_model ** 2)


def physics(cfg: dict[str, Any], n: float, lr: float, seed: int, effect: float = 1.0,
            noise_sd: float = 0.0, rng: np.random.Generator | None = None,
            logit_growth: float = 1.0, eps_harm: float = 0.0, depth_effect: float = 1.0,
            mup_effect: float = 1.0) -> dict[str, Any]:
    """Summary numbers of one planted run (see the module docstring for effect, noise_sd,
    logit_growth, eps_harm, depth_effect and mup_effect)."""
    if cfg["model.n_layers"] == 0:
        return _bigram(lr, seed, noise_sd, rng)
    x = math.log10(n / N0)
    noise = 0.01 * (seed - 0.5)  # small, so seeds differ and bootstrap intervals have width
    kappa = cfg["model.qk_kappa"]
    if kappa > 0:
        log_logit = math.log10(kappa)
    elif cfg["model.qk_layernorm"] == "none":
        log_logit = 1 + logit_growth * ((math.log10(lr) + 3) + 0.3 * x + 0.25 * x ** 2) + noise
    else:
        log_logit = 0.5 + 0.1 * x + noise
    k0 = 0.05 * (1 + 0.6 * math.log2(cfg["model.n_layers"] / 2)) ** depth_effect
    k = k0 * (1.1 if cfg["model.qk_layernorm"] == "none" else 1.0)
    k *= 1.5 if not cfg["optim.independent_weight_decay"] else 1.0
    k *= 1 + 0.5 * (1 + x) if cfg["optim.warmup_steps"] < 50 else 1.0
    k = k0 + effect * (k - k0)
    drift = 0.5 * (1 - mup_effect) if cfg["model.parametrization"] != "standard" else 0.5
    lr_star = 1e-2 * (n / N0) ** -drift
    best = 3 - 0.2 * x + (0.2 * max(0.0, math.log10(kappa) - 2) if kappa > 0 else 0.0)
    no_zl = cfg["loss.z_loss"] == 0 and cfg["optim.weight_decay"] == 0
    failed = log_logit > math.log10(LOGIT_FAIL) or (no_zl and lr >= 0.1)
    final = best + k * (math.log10(lr) - math.log10(lr_star)) ** 2 + noise
    if noise_sd and rng is not None:
        final += float(rng.normal(0.0, noise_sd))
    g = 1e-3 * (n / N0) ** -1 * (lr / 1e-3) ** -0.5
    growth = (1 + 2 * (math.log10(lr) + 3)) / (4 if cfg["loss.z_loss"] > 0 else 2 if cfg["optim.weight_decay"] else 1)
    growth += noise
    eps = cfg["optim.eps"]
    if eps_harm and not failed:
        final += eps_harm * eps / (g + eps)
    return {
        "init_loss": INIT_LOSS, "final_loss": None if failed else min(final, INIT_LOSS + 1), "diverged": failed,
        "max_attn_logit": 10 ** log_logit, "max_attn_logit_at_probe": 10 ** log_logit,
        "logz_final": LOGZ_INIT + growth - 0.5, "logz_rms_final": LOGZ_INIT + growth, "logz_rms_init": LOGZ_INIT,
        "output_logit_mean_final": -0.1 - 0.2 * growth, "grad_rms_final": g,
        "update_rms_final": 0.2 * g / (g + eps), "non_embedding_params": n,
    }


def _bigram(lr: float, seed: int, noise_sd: float, rng: np.random.Generator | None) -> dict[str, Any]:
    """A planted zero-layer model: its loss depends on the LR only (optimum 1e-2)."""
    final = 3 + BIGRAM_GAP + 0.05 * (math.log10(lr) + 2) ** 2 + 0.01 * (seed - 0.5)
    if noise_sd and rng is not None:
        final += float(rng.normal(0.0, noise_sd))
    return {"init_loss": INIT_LOSS, "final_loss": final, "diverged": False, "max_attn_logit": None,
            "max_attn_logit_at_probe": None, "logz_final": LOGZ_INIT, "logz_rms_final": LOGZ_INIT,
            "logz_rms_init": LOGZ_INIT, "output_logit_mean_final": -0.1, "grad_rms_final": None, "update_rms_final": None, "non_embedding_params": 0.0}


def planted_study(variants: dict[str, dict] | None = None, scales: dict[str, tuple[int, int]] | None = None,
                  lrs: list[float] | None = None, seeds: tuple[int, ...] = (0, 1), study: str = "planted",
                  curve_steps: int = 11, effect: float = 1.0, noise_sd: float = 0.0,
                  noise_seed: int = 0, logit_growth: float = 1.0,
                  eps_harm: float = 0.0, depth_effect: float = 1.0,
                  mup_effect: float = 1.0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(runs_df, curves_df) shaped like runs.parquet / curves.parquet (run outcomes included)."""
    rng = np.random.default_rng(noise_seed)
    variants = MITIGATION_VARIANTS if variants is None else variants
    scales = DEFAULT_SCALES if scales is None else scales
    lrs = DEFAULT_LRS if lrs is None else lrs
    runs, curves = [], []
    for scale, (d, layers) in scales.items():
        for vname, over in variants.items():
            for lr in lrs:
                for seed in seeds:
                    # a variant may override a scale key, as in the study grid (the bigram's n_layers: 0)
                    cfg = {**BASE_CONFIG, "model.d_model": d, "model.n_layers": layers, **over, "optim.lr": lr,
                           "seed": seed}
                    run_id = f"{study}-{scale}-{vname}-{lr:g}-{seed}"
                    s = physics(cfg, params(cfg["model.d_model"], cfg["model.n_layers"]), lr, seed, effect,
                                noise_sd, rng, logit_growth, eps_harm, depth_effect, mup_effect)
                    runs.append({"study": study, "run_id": run_id, "scale": scale, "variant": vname, "lr": lr,
                                 **{k: v for k, v in cfg.items()}, **s})
                    curves += _curve(run_id, study, scale, vname, lr, seed, s, cfg, curve_steps)
    runs_df = with_outcome(pl.DataFrame(runs, infer_schema_length=None))
    return runs_df, pl.DataFrame(curves, infer_schema_length=None)


def _curve(run_id: str, study: str, scale: str, variant: str, lr: float, seed: int, s: dict, cfg: dict,
           n: int) -> list[dict]:
    steps = np.linspace(0, cfg["train.steps"], n).round().astype(int)
    final = s["final_loss"] if s["final_loss"] is not None else INIT_LOSS
    logit, g = s["max_attn_logit"], s["grad_rms_final"]  # None for a zero-layer model
    out = []
    for i, step in enumerate(steps):
        t = i / (n - 1)
        out.append({"study": study, "run_id": run_id, "scale": scale, "variant": variant, "lr": lr, "seed": seed,
                    "step": int(step), "loss": INIT_LOSS + (final - INIT_LOSS) * (1 - (1 - t) ** 3),
                    "max_attn_logit": None if logit is None else 1 + (logit - 1) * t ** 2,
                    "logz_mean": LOGZ_INIT + (s["logz_final"] - LOGZ_INIT) * t ** 3,
                    "z_loss": (LOGZ_INIT + (s["logz_rms_final"] - LOGZ_INIT) * t ** 3) ** 2,
                    "output_logit_mean": s["output_logit_mean_final"] * t ** 3,
                    "grad_rms": None if g is None else g * (1 + 2 * (1 - t)), "update_rms": s["update_rms_final"],
                    "update_rms_mlp0": s["update_rms_final"], "grad_rms_mlp0": s["grad_rms_final"]})
    return out
