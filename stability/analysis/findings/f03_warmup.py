"""Finding 3: Warm-up (Sec. 3.2.1, Fig. 5).

Effect = sensitivity_trainable(shortest warm-up) - sensitivity_trainable(longest warm-up),
nats, one paired observation per (scale, seed); > 0 means the longer warm-up is less
sensitive. The paper's qualifier "most clear for the larger models" is measured per seed as
the gain at the largest scale minus the gain at the smallest.
"""
from __future__ import annotations

from typing import Any

from .. import roles
from ..verdict import NOT_RUN, directional, subcheck, t_interval
from .base import Ctx, Finding, by_value, inconclusive, not_run, register, result
from .paired_sens import MIN_TRAINABLE_LRS, NO_EFFECT_SENS, paired_gain, per_scale


def _gain_growth(pairs: list[dict[str, Any]], smallest: str, largest: str) -> list[float]:
    """Per seed present at both scales: gain at `largest` minus gain at `smallest` (nats)."""
    by = {(p["scale"], p["seed"]): p["diff"] for p in pairs}
    seeds = sorted({s for (sc, s) in by if sc == smallest} & {s for (sc, s) in by if sc == largest})
    return [by[(largest, s)] - by[(smallest, s)] for s in seeds]


def check(ctx: Ctx) -> dict:
    fam = roles.family(ctx.configs, ctx.reference, {"optim.warmup_steps"})
    by = by_value(ctx, "optim.warmup_steps", fam)
    if len(by) < 2:
        return not_run(3, "needs variants that differ from the reference only in optim.warmup_steps")
    short, long_ = by[min(by)], by[max(by)]
    iv, pairs = paired_gain(ctx, long_, short)
    scales = ctx.ordered({p["scale"] for p in pairs})
    m: dict[str, Any] = {"warmup_short": min(by), "warmup_long": max(by), "variant_short": short,
                         "variant_long": long_, "scales": scales, "gain_per_scale": per_scale(pairs)}
    n_seeds = len({p["seed"] for p in pairs})
    if not pairs:
        return inconclusive(3, f"no scale where both warm-ups have a sensitivity over >= {MIN_TRAINABLE_LRS} "
                               "trainable LRs (one LR, or every run failed)", m, n_seeds=ctx.n_seeds(short, long_))
    band = NO_EFFECT_SENS.value
    main = directional(iv, band)
    subs = {"longer_warmup_lowers_sensitivity": subcheck(
        main, iv, f"paired (scale, seed) differences, short - long warm-up; no-effect band +-{band} nats")}
    if len(scales) >= 2:
        growth = t_interval(_gain_growth(pairs, scales[0], scales[-1]))
        qual = directional(growth, band)
        subs["qualifier_larger_models"] = subcheck(
            qual, growth, f"gain at {scales[-1]} minus gain at {scales[0]}, per seed; reported beside the "
                          "outcome, not part of it (see rule)")
        qnote = f"the larger-model qualifier is {qual} (gain growth {growth.estimate:+.3f} nats)"
    else:
        subs["qualifier_larger_models"] = subcheck(NOT_RUN, note="needs two scales")
        qnote = "the larger-model qualifier is unchecked (one scale)"
    note = (f"sensitivity, short minus long warm-up: {iv.estimate:+.3f} nats (95% CI {iv.lo:+.3f}..{iv.hi:+.3f}, "
            f"{iv.n} pairs); {qnote}" if iv.n >= 2 else f"one paired observation: no interval; {qnote}")
    return result(3, main, m, note, subchecks=subs, effect=iv, effect_unit="nats of LR sensitivity",
                  n_seeds=n_seeds)


FINDING = register(Finding(
    number=3,
    title='Warm-up',
    claim='A longer warm-up period reduces LR sensitivity; this is most clear for the larger models.',
    source='Sec. 3.2.1, Fig. 5',
    quantity=('LR sensitivity over the trainable LRs (nats), shortest minus longest warm-up, paired by '
              '(scale, seed)'),
    rule=('reproduced if the 95% t-interval of the paired difference (short - long warm-up) lies above 0; '
          'not reproduced if it lies below 0 or inside the no-effect band; else inconclusive. The '
          'qualifier "most clear for the larger models" (per seed: gain at the largest scale minus at the '
          'smallest, same rule and band) is a sub-check reported beside the outcome but not combined '
          'into it: the paper states it as a qualifier of the finding, not as the finding.'),
    figures=('lr_vs_loss', 'sensitivity_vs_size', 'warmup_effect'),
    check=check,
    thresholds={"no_effect_band": NO_EFFECT_SENS},
))
