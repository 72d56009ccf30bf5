"""Finding 7: Steps and batch size (Sec. 3.2.5, App. E).

For each variant that changes train.steps or train.batch_size from the reference (warm-up
may change with them), the effect is sensitivity_trainable(variant) - sensitivity_trainable
(reference), nats, one paired observation per (scale, seed), tested for equivalence: the
claim is that the knob does not change LR sensitivity by more than the no-effect band.
"""
from __future__ import annotations

from typing import Any

from .. import roles
from ..verdict import combine, equivalence, subcheck
from .base import Ctx, Finding, inconclusive, not_run, register, result
from .paired_sens import NO_EFFECT_SENS, paired_gain, per_scale

KNOBS = frozenset({"train.steps", "train.batch_size", "optim.warmup_steps"})


def check(ctx: Ctx) -> dict:
    ref = ctx.reference
    fam = [v for v in roles.family(ctx.configs, ref, KNOBS) if v != ref
           and roles.diff(ctx.configs[v], ctx.configs[ref]) & {"train.steps", "train.batch_size"}]
    if not fam:
        return not_run(7, "needs variants that change train.steps or train.batch_size from the reference")
    band = NO_EFFECT_SENS.value
    m: dict[str, Any] = {"reference": ref, "reference_steps": ctx.cfg(ref, "train.steps"),
                         "reference_batch_size": ctx.cfg(ref, "train.batch_size"), "variants": {}}
    subs, seeds, headline = {}, set(), None
    for v in fam:
        iv, pairs = paired_gain(ctx, v, ref)  # reference - variant; equivalence is symmetric
        seeds |= {p["seed"] for p in pairs}
        m["variants"][v] = {"steps": ctx.cfg(v, "train.steps"), "batch_size": ctx.cfg(v, "train.batch_size"),
                            "warmup_steps": ctx.cfg(v, "optim.warmup_steps"),
                            "change_per_scale": per_scale(pairs)}
        subs[f"unchanged_{v}"] = subcheck(equivalence(iv, band), iv,
                                          f"reference - {v} over paired (scale, seed); equivalent if inside "
                                          f"+-{band} nats")
        headline = iv if headline is None or abs(iv.estimate) > abs(headline.estimate) else headline
    if not seeds:
        return inconclusive(7, "no scale where the knob variants and the reference have a sensitivity over "
                               ">= 2 trainable LRs", m, subchecks=subs, n_seeds=ctx.n_seeds(ref, *fam))
    outcome = combine({k: s["outcome"] for k, s in subs.items()})
    note = "; ".join(f"{k}: {s['outcome']}" for k, s in subs.items())
    return result(7, outcome, m, note, subchecks=subs, effect=headline,
                  effect_unit="nats of LR sensitivity, reference minus the knob variant farthest from it",
                  n_seeds=len(seeds))


FINDING = register(Finding(
    number=7,
    title='Steps and batch size',
    claim='Training for 2x more or fewer steps, or with a larger batch and fewer steps, does not change LR sensitivity much.',
    source='Sec. 3.2.5, App. E',
    quantity=('per knob variant, LR sensitivity over the trainable LRs (nats), reference minus variant, '
              'paired by (scale, seed)'),
    rule=('per knob variant an equivalence test: reproduced if the 95% t-interval of the paired difference '
          'lies inside the no-effect band, not reproduced if it lies wholly outside, else inconclusive; '
          'the sub-checks combine (any not reproduced -> not reproduced).'),
    figures=('lr_vs_loss', 'sensitivity_vs_size'),
    check=check,
    thresholds={"no_effect_band": NO_EFFECT_SENS},
))
