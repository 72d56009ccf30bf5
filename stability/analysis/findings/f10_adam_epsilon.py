"""Finding 10: AdamW epsilon (Sec. 3.4.2, Figs. 13-14).

The paper: the gradient RMS falls with model size and with LR; at 4.8B parameters it nears
the default epsilon 1e-8, so the update m / (sqrt(v) + eps) shrinks and layers stop learning;
lowering epsilon to 1e-15 fixed a 4.8B run. Measured on block 0's first MLP matrix at the end
of training (`grad_rms_final`, `update_rms_final`: mean over the last 20% of steps).

Sub-checks (slopes are of log10 grad RMS, stable runs of the reference variant only):

  falls_with_size   slope vs log10 non-embedding parameters, one per (LR, seed) with >= 2
                    sizes; its 95% t-interval lies below 0.
  falls_with_lr     slope vs log10 peak LR, one per (scale, seed) with >= 2 LRs; below 0.
  eps_harm          counted only when the study sets a large epsilon near the measured grad
                    RMS at its largest scale (EPS_NEAR_LO <= eps / g <= EPS_NEAR_HI, the regime
                    the paper reaches at 4.8B) beside a small one that cannot matter
                    (eps / g <= EPS_NEGLIGIBLE): final loss at the large epsilon minus at the
                    small one, paired by (LR, seed) at the largest scale, above 0 (dropping
                    epsilon improves loss). Otherwise missing, so the finding reads `partial`.
  update_collapse   the update RMS at the large over the small epsilon, reported as a mechanism
                    demonstration (verdict.NOT_TESTABLE, never counted): with eps >> g the
                    update shrinks by arithmetic, whatever the model does.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from .. import roles
from ..fits import fit_loglog
from ..sensitivity import col
from ..verdict import (NOT_RUN, NOT_TESTABLE, Interval, combine, directional, subcheck, t_interval)
from .base import Ctx, Finding, Threshold, by_value, register, result

EPS_NEAR_LO = 1 / 3
EPS_NEAR_HI = 3.0
EPS_NEGLIGIBLE = 0.01
EPS_LOSS_BAND = 0.02

THRESHOLDS = {
    "slope_band": Threshold(0.0, "the paper states a direction (grad RMS falls), not a size: any log-log slope "
                                 "whose interval lies below 0"),
    "eps_near_grad_rms_lo": Threshold(EPS_NEAR_LO, "eps within half a decade of the measured grad RMS is the paper's "
                                                   "4.8B regime (grad RMS near eps): the update shrinks by a factor "
                                                   "1.3-4, not by arithmetic fiat"),
    "eps_near_grad_rms_hi": Threshold(EPS_NEAR_HI, "above it eps >> grad RMS shrinks the update by ~eps/g whatever "
                                                   "the model does (the review: such a test cannot fail)"),
    "eps_negligible": Threshold(EPS_NEGLIGIBLE, "the small arm stands for 'eps dropped by 1e7': at eps/g <= 0.01 its "
                                                "update is within 1% of eps = 0"),
    "eps_loss_band_nats": Threshold(EPS_LOSS_BAND, "no-effect band: 0.02 nats is the size of the one-seed loss "
                                                   "differences between arms with no mechanism in the earlier "
                                                   "combined study (0.015-0.017, the review, F11)"),
}


def _falling(iv: Interval) -> str:
    """Outcome of the claim "slope < 0" (verdict.directional on -slope)."""
    return directional(Interval(-iv.estimate, -iv.hi, -iv.lo, iv.n))


def _slopes(df: pl.DataFrame, group: list[str], x: str) -> dict[tuple, float]:
    """Per group: slope of log10 g against log10 x (a power law), with >= 2 distinct x."""
    out = {}
    for key, g in df.group_by(group, maintain_order=True):
        fit = fit_loglog(g[x].to_numpy(), g["g"].to_numpy(), 1)
        if fit is not None:
            out[tuple(key)] = float(fit.coef[0])
    return out


def _trend(slopes: dict[tuple, float], what: str, need: str) -> dict:
    if not slopes:
        return subcheck(NOT_RUN, note=f"needs {need}")
    iv = t_interval(slopes.values())
    return subcheck(_falling(iv), iv, f"log-log slope of grad RMS vs {what}: {iv.estimate:+.2f} "
                    f"[{iv.lo:+.2f}, {iv.hi:+.2f}] over {iv.n} fits", n_fits=iv.n)


def check(ctx: Ctx) -> dict:
    ref = ctx.reference
    if ctx.runs.is_empty() or "grad_rms_final" not in ctx.runs.columns:
        return result(10, NOT_RUN, {"variant": ref}, "needs grad_rms_final / update_rms_final")
    stable = (ctx.runs.filter((pl.col("variant") == ref) & ~pl.col("failed"))
              .with_columns(g=col(ctx.runs, "grad_rms_final"), n=col(ctx.runs, "non_embedding_params"))
              .filter(pl.col("g").is_not_null() & (pl.col("g") > 0)))
    m: dict[str, Any] = {"variant": ref}
    size = _slopes(stable, ["lr", "seed"], "n")
    lr = _slopes(stable, ["scale", "seed"], "lr")
    m["grad_rms_size_slope_per_lr_seed"] = {f"{k[0]:g}/{k[1]}": v for k, v in size.items()}
    m["grad_rms_lr_slope_per_scale_seed"] = {f"{k[0]}/{k[1]}": v for k, v in lr.items()}
    f = ctx.fits.filter((pl.col("kind") == "grad_rms") & (pl.col("variant") == ref)) \
        if not ctx.fits.is_empty() and "kind" in ctx.fits.columns else pl.DataFrame()
    if f.height and "predicted_crossing_params" in f.columns:
        cross = f["predicted_crossing_params"].drop_nulls()
        m["smallest_predicted_size_reaching_eps"] = float(cross.min()) if len(cross) else None
    eps = ctx.cfg(ref, "optim.eps")
    if isinstance(eps, (int, float)) and eps > 0 and stable.height:
        m["min_grad_rms_over_eps"] = float(stable["g"].min()) / eps
    subs = {"falls_with_size": _trend(size, "model size", ">= 2 sizes with stable runs at one LR"),
            "falls_with_lr": _trend(lr, "LR", ">= 2 LRs with stable runs at one size")}
    subs["eps_harm"], collapse, harm = _eps(ctx, m)
    if collapse is not None:
        subs["update_collapse"] = collapse
    outcome = combine({k: s["outcome"] for k, s in subs.items()})
    note = "; ".join(f"{k}: {s['note']}" for k, s in subs.items() if s["note"])
    return result(10, outcome, m, note, subchecks=subs, effect=harm,
                  effect_unit="nats, final loss at the large epsilon minus at the small one (largest scale, "
                              "paired by LR and seed)" if harm else "",
                  n_seeds=ctx.n_seeds(ref))


def _eps(ctx: Ctx, m: dict) -> tuple[dict, dict | None, Interval | None]:
    """The eps_harm record, the update_collapse record (None without two epsilon arms) and
    eps_harm's interval if it ran (see the module docstring)."""
    by = by_value(ctx, "optim.eps", roles.family(ctx.configs, ctx.reference, {"optim.eps"}))
    if len(by) < 2:
        return subcheck(NOT_RUN, note="no variants that differ only in optim.eps"), None, None
    e_small, e_large = min(by), max(by)
    small, large = by[e_small], by[e_large]
    runs = ctx.runs.with_columns(g=col(ctx.runs, "grad_rms_final"), u=col(ctx.runs, "update_rms_final"))
    both = set(runs.filter(pl.col("variant") == small)["scale"]) & set(runs.filter(pl.col("variant") == large)["scale"])
    if not both:
        return subcheck(NOT_RUN, note="the two epsilon arms share no scale"), None, None
    scale = ctx.ordered(both)[-1]
    at = runs.filter(pl.col("scale") == scale)
    a = at.filter(pl.col("variant") == small).select("lr", "seed", "g", "u", "failed", s_loss="loss_capped")
    b = at.filter(pl.col("variant") == large).select("lr", "seed", l_u="u", l_failed="failed", l_loss="loss_capped")
    pairs = a.join(b, on=["lr", "seed"]).sort("lr", "seed")
    g_ok = pairs.filter(~pl.col("failed") & pl.col("g").is_not_null() & (pl.col("g") > 0))["g"]
    if not len(g_ok):
        return subcheck(NOT_RUN, note=f"no stable run of the eps={e_small:g} arm at {scale} to measure the "
                        "grad RMS"), None, None
    g = float(np.median(g_ok.to_numpy()))
    r_large, r_small = e_large / g, e_small / g
    m.update(eps_small=e_small, eps_large=e_large, scale=scale, grad_rms_at_scale=g,
             eps_large_over_grad_rms=r_large, eps_small_over_grad_rms=r_small)
    # the mechanism: update RMS ratio per LR where both arms trained
    u = pairs.filter(~pl.col("failed") & ~pl.col("l_failed") & (pl.col("u") > 0))
    ratios = (u["l_u"] / u["u"]).to_list()
    m["update_rms_ratio_per_lr_seed"] = ratios
    collapse = subcheck(NOT_TESTABLE, note=(f"mechanism demonstration, not counted: update RMS at eps={e_large:g} is "
                                            f"{np.median(ratios):.2f}x that at eps={e_small:g} (median over LRs); "
                                            f"eps/g = {r_large:.3g}" if ratios else "no LR where both arms trained"),
                        update_rms_ratio_median=float(np.median(ratios)) if ratios else None)
    if not (EPS_NEAR_LO <= r_large <= EPS_NEAR_HI and r_small <= EPS_NEGLIGIBLE):
        return subcheck(NOT_RUN, note=(f"the large epsilon is not set near the measured grad RMS at {scale} "
                                       f"(eps/g = {r_large:.3g}, needs {EPS_NEAR_LO:.2g}-{EPS_NEAR_HI:g}; small "
                                       f"arm eps/g = {r_small:.2g}, needs <= {EPS_NEGLIGIBLE:g}), so the "
                                       "loss test of the paper's regime is not run"),
                        eps_large_over_grad_rms=r_large), collapse, None
    diffs = (pairs["l_loss"] - pairs["s_loss"]).to_list()
    iv = t_interval(diffs)
    return subcheck(directional(iv, EPS_LOSS_BAND), iv,
                    f"at {scale}, eps={e_large:g} (eps/g = {r_large:.2f}) minus eps={e_small:g}: "
                    f"{iv.estimate:+.3f} nats [{iv.lo:+.3f}, {iv.hi:+.3f}] over {iv.n} (LR, seed) pairs",
                    eps_large_over_grad_rms=r_large, per_pair=diffs), collapse, iv


FINDING = register(Finding(
    number=10,
    title='AdamW epsilon',
    claim='Gradient RMS falls with model size and with LR; at large scale it nears epsilon, the AdamW update '
          'shrinks and layers stop learning; lowering epsilon fixed a 4.8B run.',
    source='Sec. 3.4.2, Figs. 13-14',
    quantity='log-log slopes of block-0 MLP grad RMS vs size and vs LR; final loss with epsilon near the grad RMS '
             'minus with a negligible epsilon (nats); update RMS ratio (mechanism only)',
    rule='falls_with_size and falls_with_lr: the 95% t-interval of the log-log slopes (one per LR and seed, or per '
         'scale and seed) lies below 0. eps_harm: run only when the large epsilon is within half a decade of the '
         'measured grad RMS at the largest scale and the small one is <= 1% of it; the loss difference (large - '
         'small, paired by LR and seed) lies above 0 and outside the 0.02-nat no-effect band. The update-RMS '
         'collapse is a mechanism demonstration and never counts. Outcome: verdict.combine (a missing eps_harm '
         'gives partial).',
    figures=('grad_rms_vs_size', 'update_rms', 'lr_vs_loss'),
    check=check,
    thresholds=THRESHOLDS,
))
