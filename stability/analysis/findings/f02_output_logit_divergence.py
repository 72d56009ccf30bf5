"""Finding 2: Output-logit divergence (Sec. 3.1.2, Figs. 3-4).

The paper: without weight decay the output logits diverge late in training, and z-loss
(1e-4 x mean over tokens of log^2 Z, Z = sum_j exp(logit_j)) resolves it. Measured here as
the growth over training of the RMS over tokens of log Z (nats):

    drift = logz_rms_final - logz_rms_init

(logz_rms_final: sqrt of the last-20% window mean of the unscaled z-loss; logz_rms_init:
its step-0 value, about log(vocab) plus the spread of the initial logits, not 0). The
drift is read at one LR per scale: the highest LR at which both compared variants trained
at every seed, so a run that never trained is never read. Loss harm, the paper's Fig. 3
(final loss worse without z-loss at high LR), is a separate verdict beside the outcome.
"""
from __future__ import annotations

import math
from typing import Any

import polars as pl

from .. import roles
from ..verdict import NOT_RUN, Interval, combine, directional, subcheck, t_interval
from .base import Ctx, Finding, Threshold, inconclusive, not_run, register, result

DRIFT_MIN = 2.0
REMOVAL_MAX_FRACTION = 0.5
LOSS_HARM_MIN = 0.02

THRESHOLDS = {
    "drift_min": Threshold(DRIFT_MIN, (
        "nats of RMS log Z growth without z-loss and decay (issue 11, point 5, fixed before the rerun). "
        "Ordinary learning raises RMS log Z by about 1.3 nats in every variant, z-loss included (5.9 -> "
        "7.2 in 300 steps, science audit probe P0): a drift must clear that by a margin.")),
    "removal_max_fraction": Threshold(REMOVAL_MAX_FRACTION, (
        "the z-loss run's growth must be at most this fraction of the growth without it (issue 11, "
        "point 5). 'z-loss resolves this instability' (Sec. 3.1.2) is read as removing most of the "
        "growth; the paper states no level log Z must reach, so none is asked.")),
    "loss_harm_min": Threshold(LOSS_HARM_MIN, (
        "nats of final loss the harm must exceed. The paper's instability (Fig. 3) is a "
        "loss degradation seen on an axis of about 1 nat; 0.02 is 2% of that and a fifth of the ~0.1-nat "
        "seed spread of LR sensitivity here (science audit Sec. 1).")),
}

RULE = (
    "Compare the variant without z-loss and without weight decay ('off') with the variant that "
    "differs from it only in z-loss ('on'; any z-loss variant, with a note, if none differs only "
    "there). Per scale, read the highest LR at which both trained at every seed (never an LR where "
    "either failed). Per (scale, seed) pair: drift_off, drift_on = growth of RMS log Z from step 0. "
    "drift: the 95% t-interval of drift_off lies above 2 nats (reproduced), below it (not "
    "reproduced), else inconclusive. removal: the interval of 0.5 x drift_off - drift_on lies above "
    "0 (reproduced), below 0 (not reproduced), else inconclusive. Outcome = combine(drift, "
    "removal). Separate verdict, not part of the outcome: loss_harm, at the highest LR where 'on' "
    "trained at every seed, the interval of final loss off - on (failed runs at loss_0) above "
    "0.02 nats (reproduced), below 0.02 (not reproduced), else inconclusive. The "
    "output-logit mean (the paper's Fig. 4) and the signed mean log Z are reported, not judged: "
    "z-loss itself pulls every logit down, so their sign cannot tell the instability here.")

READ = ("logz_rms_init", "logz_rms_final", "logz_final", "output_logit_mean_final", "final_loss", "loss_capped")


def above(iv: Interval, threshold: float) -> str:
    """Outcome of the claim "the quantity exceeds threshold": directional on iv - threshold."""
    return directional(Interval(iv.estimate - threshold, iv.lo - threshold, iv.hi - threshold, iv.n))


def _no_z(c: dict) -> bool:
    return (c.get("loss.z_loss") or 0) == 0


def _no_wd(c: dict) -> bool:
    return (c.get("optim.weight_decay") or 0) == 0


def _variants(ctx: Ctx) -> tuple[str | None, str | None, str | None, str]:
    """(off, on, decay_only, note): off has neither z-loss nor decay; on differs from off only
    in loss.z_loss if any variant does; decay_only has decay but no z-loss (reported only)."""
    offs = ctx.variants_where(lambda c: _no_z(c) and _no_wd(c))
    ons = ctx.variants_where(lambda c: not _no_z(c))
    decay = ctx.variants_where(lambda c: _no_z(c) and not _no_wd(c))
    if not offs or not ons:
        return None, None, None, ""
    for off in offs:
        for on in ons:
            if roles.diff(ctx.configs[on], ctx.configs[off]) == {"loss.z_loss"}:
                return off, on, (decay[0] if decay else None), ""
    on = ctx.reference if ctx.reference in ons else ons[0]
    extra = sorted(roles.diff(ctx.configs[on], ctx.configs[offs[0]]) - {"loss.z_loss"})
    return offs[0], on, (decay[0] if decay else None), (
        f"not a one-factor comparison: {on} also differs from {offs[0]} in " + ", ".join(extra))


def _rows(ctx: Ctx, variants: list[str]) -> pl.DataFrame:
    df = ctx.runs.filter(pl.col("variant").is_in(variants))
    have = [c for c in READ if c in df.columns]
    return df.select("scale", "variant", "lr", "seed", "failed", *[pl.col(c).cast(pl.Float64) for c in have])


def _highest_trained_lr(df: pl.DataFrame, variants: list[str]) -> dict[str, float]:
    """scale -> the highest LR at which every run of every one of `variants` trained."""
    g = (df.filter(pl.col("variant").is_in(variants)).group_by("scale", "lr")
         .agg(ok=(~pl.col("failed")).all(), n=pl.col("variant").n_unique())
         .filter(pl.col("ok") & (pl.col("n") == len(variants))))
    out = g.group_by("scale").agg(pl.col("lr").max())
    return dict(zip(out["scale"], out["lr"]))


def _pairs(df: pl.DataFrame, a: str, b: str, lr_by_scale: dict[str, float], column: str) -> list[dict]:
    """Per (scale, seed) at that scale's LR: {scale, seed, lr, a, b} of one column (both finite)."""
    out = []
    for scale, lr in lr_by_scale.items():
        at = df.filter((pl.col("scale") == scale) & (pl.col("lr") == lr))
        x = {r["seed"]: r[column] for r in at.filter(pl.col("variant") == a).iter_rows(named=True)}
        y = {r["seed"]: r[column] for r in at.filter(pl.col("variant") == b).iter_rows(named=True)}
        for seed in sorted(set(x) & set(y)):
            if all(v is not None and math.isfinite(v) for v in (x[seed], y[seed])):
                out.append({"scale": scale, "seed": seed, "lr": lr, "a": x[seed], "b": y[seed]})
    return out


def _mean(df: pl.DataFrame, variant: str, scale: str, lr: float, column: str) -> float | None:
    if column not in df.columns:
        return None
    v = (df.filter((pl.col("variant") == variant) & (pl.col("scale") == scale) & (pl.col("lr") == lr))[column]
         .drop_nulls().drop_nans())
    return float(v.mean()) if len(v) else None


def _by_lr(ctx: Ctx, df: pl.DataFrame, variants: dict[str, str]) -> list[dict[str, Any]]:
    """Every (scale, LR, role): mean over seeds of the columns the finding reports, and how many runs failed."""
    out = []
    for scale in ctx.ordered(set(df["scale"].to_list())):
        for lr in sorted(set(df.filter(pl.col("scale") == scale)["lr"].to_list())):
            for role, v in variants.items():
                sub = df.filter((pl.col("variant") == v) & (pl.col("scale") == scale) & (pl.col("lr") == lr))
                if not sub.height:
                    continue
                row = {"scale": scale, "lr": lr, "role": role, "variant": v, "n_runs": sub.height,
                       "n_failed": int(sub["failed"].sum())}
                for c in READ[:4]:
                    row[c] = _mean(df, v, scale, lr, c)
                if row["logz_rms_final"] is not None and row["logz_rms_init"] is not None:
                    row["drift"] = row["logz_rms_final"] - row["logz_rms_init"]
                out.append(row)
    return out


def check(ctx: Ctx) -> dict:
    off, on, decay, note = _variants(ctx)
    if off is None:
        return not_run(2, "needs a variant with loss.z_loss = 0 and optim.weight_decay = 0, and one with z-loss")
    parts = {"off": off, "on": on, **({"decay_only": decay} if decay else {})}
    df = _rows(ctx, list(parts.values()))
    m: dict[str, Any] = {"variant_off": off, "variant_on": on, "variant_decay_only": decay,
                         "by_lr": _by_lr(ctx, df, parts)}
    n_seeds = ctx.n_seeds(off, on)
    if not {"logz_rms_final", "logz_rms_init"} <= set(df.columns):
        return not_run(2, "runs lack logz_rms_final or logz_rms_init (summaries or metrics written before "
                          "they existed: retrain those)", m)
    lr_read = _highest_trained_lr(df, [off, on])
    m["lr_read"] = {s: lr_read[s] for s in ctx.ordered(set(lr_read))}
    pairs_off = _pairs(df, off, on, lr_read, "logz_rms_init")
    fin = {(p["scale"], p["seed"]): p for p in _pairs(df, off, on, lr_read, "logz_rms_final")}
    drifts = [{"scale": p["scale"], "seed": p["seed"], "lr": p["lr"],
               "drift_off": fin[k]["a"] - p["a"], "drift_on": fin[k]["b"] - p["b"]}
              for p in pairs_off if (k := (p["scale"], p["seed"])) in fin]
    harm = _loss_harm(ctx, df, off, on)
    if not drifts:
        why = ("no LR at which both variants trained at every seed"
               if not lr_read else "no (scale, seed) pair with finite log Z in both variants")
        return inconclusive(2, why + ("; " + note if note else ""), m, subchecks={"loss_harm": harm},
                            n_seeds=n_seeds)
    m["pairs"] = drifts
    for role, v in parts.items():
        m[f"at_lr_read_{role}"] = {s: {c: _mean(df, v, s, lr, c) for c in READ[:4]} for s, lr in m["lr_read"].items()}
    iv_drift = t_interval(d["drift_off"] for d in drifts)
    iv_margin = t_interval(REMOVAL_MAX_FRACTION * d["drift_off"] - d["drift_on"] for d in drifts)
    subs = {
        "drift": subcheck(above(iv_drift, DRIFT_MIN), iv_drift,
                          f"growth of RMS log Z without z-loss and decay, nats; needs the interval above "
                          f"{DRIFT_MIN:g}", drift_on=t_interval(d["drift_on"] for d in drifts).as_dict()),
        "removal": subcheck(directional(iv_margin), iv_margin,
                            f"{REMOVAL_MAX_FRACTION:g} x drift_off - drift_on per pair, nats; needs the interval "
                            "above 0"),
        "loss_harm": harm}
    outcome = combine({"drift": subs["drift"]["outcome"], "removal": subs["removal"]["outcome"]})
    m["separate_verdicts"] = {"loss_harm": harm["outcome"]}
    effect = t_interval(d["drift_off"] - d["drift_on"] for d in drifts)
    return result(2, outcome, m, note, subchecks=subs, effect=effect,
                  effect_unit="nats of RMS log Z growth, without z-loss minus with it", n_seeds=n_seeds)


def _loss_harm(ctx: Ctx, df: pl.DataFrame, off: str, on: str) -> dict:
    """Separate verdict: final loss (failed runs at loss_0) without z-loss minus with it, at the
    highest LR per scale where the z-loss variant trained at every seed."""
    if "loss_capped" not in df.columns:
        return subcheck(NOT_RUN, note="no final losses")
    lr_on = _highest_trained_lr(df, [on])
    pairs = _pairs(df, on, off, lr_on, "loss_capped")
    iv = t_interval(p["b"] - p["a"] for p in pairs)
    return subcheck(above(iv, LOSS_HARM_MIN) if pairs else NOT_RUN, iv,
                    "separate verdict (not part of the outcome): final loss without z-loss minus with it, "
                    f"nats; failed runs count at loss_0; needs the interval above {LOSS_HARM_MIN:g}",
                    lr={s: lr_on[s] for s in ctx.ordered(set(lr_on))},
                    pairs=[{"scale": p["scale"], "seed": p["seed"], "loss_on": p["a"], "loss_off": p["b"]}
                           for p in pairs])


FINDING = register(Finding(
    number=2,
    title='Output-logit divergence',
    claim=('"This instability occurs when the logits diverge and become very negative ... In contrast to the '
           'attention logit growth instability, this divergence occurs towards the end of training." '
           '"... instability related to output logit divergence occurs in models with no weight decay '
           'regardless of scale, and z-loss resolves this instability. Weight decay also mitigates this '
           'instability for the larger models we test."'),
    source='Sec. 3.1.2, Figs. 3-4',
    quantity=('growth from step 0 of the RMS over tokens of log Z (nats) without z-loss and decay, and with '
              'z-loss, at the highest LR where both trained; final-loss difference (nats) as a separate '
              'verdict; output-logit mean and signed mean log Z reported'),
    rule=RULE,
    figures=('lr_vs_loss', 'logz_vs_step'),
    check=check,
    thresholds=THRESHOLDS,
))
