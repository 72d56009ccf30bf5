"""Finding 2: Output-logit divergence (Sec. 3.1.2, Figs. 3-4).

Ported unchanged from the single claims module into the findings registry; its check is
still the pre-registry decision rule (see `rule`).
"""
from __future__ import annotations


from typing import Any

import polars as pl

from .base import (Ctx, Finding, Threshold, by_value, compare_sensitivity, frac, from_bool, not_run, one_factor,
                   register, result)

LOGZ_DRIFT = 1.0
LOGZ_SMALL = 0.5
MAJORITY = 0.5


def check(ctx: Ctx) -> dict:
    no_zl = lambda c: (c.get("loss.z_loss") or 0) == 0
    is_off = lambda c: no_zl(c) and (c.get("optim.weight_decay") or 0) == 0
    offs, note = one_factor(ctx, {"loss.z_loss", "optim.weight_decay"}, is_off)
    ref_on = not no_zl(ctx.configs.get(ctx.reference, {}))
    ons = [ctx.reference] if ref_on else ctx.variants_where(lambda c: not no_zl(c))
    if not offs or not ons:
        return not_run(2, "needs a variant with loss.z_loss = 0 and optim.weight_decay = 0, and one with z-loss")
    off, on = offs[0], ons[0]
    lr = max(ctx.lrs(off) & ctx.lrs(on), default=None)
    z_off = ctx.per_scale(off, "logz_rms_final", lr)
    z_on = ctx.per_scale(on, "logz_rms_final", lr)
    scales = ctx.ordered(set(z_off) & set(z_on))
    m: dict[str, Any] = {"variant_off": off, "variant_on": on, "lr": lr, "scales": scales,
                         "rms_logz_off": [z_off[s] for s in scales], "rms_logz_on": [z_on[s] for s in scales]}
    decay_only = ctx.variants_where(lambda c: no_zl(c) and (c.get("optim.weight_decay") or 0) > 0)
    if decay_only and lr is not None:
        z_wd = ctx.per_scale(decay_only[0], "logz_rms_final", lr)
        m.update(variant_decay_only=decay_only[0], rms_logz_decay_only=[z_wd.get(s) for s in scales])
    if not scales:
        return not_run(2, "no finite logz_rms_final at the highest common LR (diverged runs, or summaries "
                          "written before logz_rms_final existed: retrain those)", m)
    # Drift is growth from where log Z started (~log(vocab) at init, not 0); runs without
    # a step-0 metrics row fall back to reading from 0.
    z_off0 = ctx.per_scale(off, "logz_rms_init", lr)
    m["rms_logz_init_off"] = [z_off0.get(s) for s in scales]
    drift = [z_off[s] - z_off0.get(s, 0.0) >= LOGZ_DRIFT for s in scales]
    held = [z_on[s] < LOGZ_SMALL for s in scales]
    flags = [a and b for a, b in zip(drift, held)]
    # The two halves are reported apart, so a run that shows the drift but not yet its
    # removal reads as such; the verdict still needs both.
    m.update(frac_scales_drift=frac(drift), frac_scales_held_by_z_loss=frac(held),
             frac_scales_drift_removed=frac(flags))
    return result(2, from_bool(frac(flags) > MAJORITY), m, note)


FINDING = register(Finding(
    number=2,
    title='Output-logit divergence',
    claim='Without weight decay, output logits diverge and become very negative towards the end of training, at every scale; z-loss resolves this instability, and weight decay also mitigates it for the larger models.',
    source='Sec. 3.1.2, Figs. 3-4',
    quantity='RMS over tokens of log Z at the end of training at the highest LR, per scale: its growth from step 0 without z-loss and decay, and its size with z-loss',
    rule="pre-registry rule: " + 'Without weight decay, output logits drift so log Z leaves 0 late in training; z-loss removes it.',
    figures=('lr_vs_loss', 'logz_vs_step'),
    check=check,
))
