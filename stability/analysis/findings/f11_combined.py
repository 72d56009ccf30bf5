"""Finding 11: Combined mitigations (Abstract and Sec. 1).

The paper's words: combining the techniques trains small models "that achieve similar losses
across orders of magnitude of learning rate variation"; and "When employing qk-layernorm and
z-loss regularization, these other techniques [warm-up, independent weight decay, muParam]
usually have little impact on the range of learning rates at which models can be stably
trained, but do affect the sensitivity to learning rate within this range."

Sub-checks, all on the reference variant (every mitigation on) and one-factor removals:

  flat             at every scale some window of >= FLAT_DECADES decades of the LR grid has
                   every LR's loss within FLAT_BAND nats of the best LR's. The window is the
                   one with the smallest worst excess on the seed-mean curve; the excess is
                   then taken per (scale, seed) and its 95% t-interval must lie below
                   FLAT_BAND (above it: not reproduced). Failed runs count at loss_0.
  <variant>        for each variant that changes only mitigations: the paired (scale, seed)
                   effect of the removal on sensitivity_trainable (removed minus reference,
                   Ctx.paired_effect) lies above 0 and outside +-REMOVAL_BAND.
                   A removal that cannot act within the run is verdict.NOT_TESTABLE, decided
                   from the configs alone (`can_act`), and never counts.
  remove_<name>    for each mitigation of MITIGATIONS that no variant removes: NOT_TESTABLE
                   when it cannot act in the reference's horizon; missing (so `partial`) when
                   it could and is one of the paper's "other techniques"; the base mitigations
                   (qk-layernorm, z-loss) are the subject of findings 1 and 2 and only noted.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import polars as pl

from ... import interventions
from ...config import RunConfig, flatten
from .. import roles
from ..verdict import NOT_RUN, NOT_TESTABLE, Interval, at_most, combine, directional, subcheck, t_interval
from .base import Ctx, Finding, Threshold, register, result

FLAT_BAND = 0.2
FLAT_DECADES = 2.0
REMOVAL_BAND = 0.02
ZLOSS_DOSE = 0.2
DECAY_DOSE = 0.1

THRESHOLDS = {
    "flat_band_nats": Threshold(FLAT_BAND, "the lenient end of the review's 0.1-0.2 nats: 'similar losses' is "
                                           "qualitative, and 300-step runs at a low LR are further from converged "
                                           "than the paper's 1e5-step runs"),
    "flat_decades": Threshold(FLAT_DECADES, "'orders of magnitude' (plural) of LR: at least two decades"),
    "removal_band_nats": Threshold(REMOVAL_BAND, "no-effect band on sensitivity: the earlier study's z-loss and "
                                                 "decay arms, which have no mechanism at 300 steps, moved it by "
                                                 "0.015-0.017 nats (the review, F11)"),
    "z_loss_dose": Threshold(ZLOSS_DOSE, "z-loss coefficient x steps: in the review's probe (s0, LR 0.3, 1e-4) the "
                                         "z-loss gap in RMS log Z opened only after ~4,000 steps (dose 0.4); below "
                                         "half that it cannot have acted (the paper: 1e-4 x 1e5 = 10)"),
    "decay_dose": Threshold(DECAY_DOSE, "decay exponent sum_t lambda_eff s_t (weights shrink by exp(-dose) from "
                                        "decay alone): below 0.1 they shrink < 10% over the run (the default here, "
                                        "1e-4 x 300 steps, shrinks ~1.5%, the review); the paper's is ~5"),
}

# The mitigations of the reference, the keys that turn each off (the interventions' own,
# stability.interventions; warm-up is a schedule hyperparameter), and whether the paper's
# Sec. 1 sentence calls it one of the "other techniques" (whose removal this finding tests).
_OTHER = {"qk_layernorm": False, "z_loss": False, "weight_decay": True}
MITIGATIONS: dict[str, dict[str, Any]] = {
    **{name: {"keys": set(interventions.REGISTRY[name].keys), "off": dict(interventions.REGISTRY[name].off),
              "other": other} for name, other in _OTHER.items()},
    "warmup": {"keys": {"optim.warmup_steps"}, "off": {"optim.warmup_steps": 0}, "other": True},
}
MITIGATION_KEYS = frozenset().union(*(m["keys"] for m in MITIGATIONS.values()))
DEFAULTS = flatten(RunConfig().to_dict())  # a key the runs do not record has its built-in default


def decay_dose(cfg: Callable[[str], Any], lr: float) -> float:
    """sum over steps of the per-step decay factor: lambda s_t (independent) or lr lambda s_t
    (coupled), with s_t the run's LR schedule (stability.optim.schedule; Sec. 3.2.2)."""
    from ...config import OptimConfig
    from ...optim import schedule  # imports torch: only when a decay change is judged
    lam = float(cfg("optim.weight_decay"))
    if lam == 0:
        return 0.0
    steps = int(cfg("train.steps"))
    o = OptimConfig(lr=lr, min_lr=min(float(cfg("optim.min_lr")), lr), warmup_steps=int(cfg("optim.warmup_steps")))
    total = sum(schedule(t, o, steps) for t in range(1, steps + 1))
    return lam * total * (1.0 if cfg("optim.independent_weight_decay") else lr)


def can_act(ref: Callable[[str], Any], var: Callable[[str], Any], lrs: list[float]) -> tuple[bool, dict[str, Any]]:
    """Whether switching from config `ref` to `var` can change training within the run, from
    the configs alone (module docstring; THRESHOLDS gives each dose and its reason)."""
    changed = {name for name, mit in MITIGATIONS.items() if any(ref(k) != var(k) for k in mit["keys"])}
    why: dict[str, Any] = {}
    acts = False
    for name in sorted(changed):
        if name == "z_loss":
            dose = abs(float(ref("loss.z_loss")) - float(var("loss.z_loss"))) * int(ref("train.steps"))
            why["z_loss_dose"] = dose
            acts |= dose >= ZLOSS_DOSE
        elif name == "weight_decay":
            dose = max((abs(decay_dose(ref, lr) - decay_dose(var, lr)) for lr in lrs), default=0.0)
            why["decay_dose"] = dose
            acts |= dose >= DECAY_DOSE
        else:  # qk-layernorm (logit growth) and warm-up act from the first steps
            acts = True
    return acts, why


def _getter(ctx: Ctx, variant: str, over: dict | None = None) -> Callable[[str], Any]:
    def get(key: str) -> Any:
        if over and key in over:
            return over[key]
        v = ctx.cfg(variant, key, DEFAULTS.get(key))
        return DEFAULTS.get(key) if v == roles.VARIES else v
    return get


def flatness(ctx: Ctx, ref: str) -> tuple[dict, Interval | None, dict[str, Any]]:
    """The `flat` sub-check record, its interval and per-scale numbers (module docstring)."""
    df = ctx.runs.filter(pl.col("variant") == ref)
    lrs = sorted(df["lr"].unique().to_list())
    if len(lrs) < 2 or math.log10(lrs[-1] / lrs[0]) < FLAT_DECADES - 1e-9:
        return subcheck(NOT_RUN, note=f"the LR grid spans less than {FLAT_DECADES:g} decades"), None, {}
    excess, per_scale = [], {}
    for scale in ctx.ordered(set(df["scale"].to_list())):
        d = df.filter(pl.col("scale") == scale)
        mean = d.group_by("lr").agg(pl.col("loss_capped").mean()).sort("lr")
        x, y = mean["lr"].to_numpy(), mean["loss_capped"].to_numpy()
        best, window, worst_lr = math.inf, None, None
        for i in range(len(x)):
            for j in range(i, len(x)):
                if math.log10(x[j] / x[i]) >= FLAT_DECADES - 1e-9:
                    worst = float(y[i:j + 1].max() - y.min())
                    if worst < best:
                        best, window, worst_lr = worst, (float(x[i]), float(x[j])), float(x[i + y[i:j + 1].argmax()])
                    break  # the shortest window from i; longer ones only add LRs
        if window is None:
            continue
        seeds = []
        for _, s in d.sort("seed").group_by("seed", maintain_order=True):  # seed order: a stable page
            inside = s.filter(pl.col("lr").is_between(*window))["loss_capped"]
            seeds.append(float(inside.max() - s["loss_capped"].min()))
        excess += seeds
        per_scale[scale] = {"window": list(window), "worst_lr": worst_lr, "excess_seed_mean_curve": best,
                            "excess_per_seed": seeds}
    if not excess:
        return subcheck(NOT_RUN, note="no scale with a full window"), None, per_scale
    iv = t_interval(excess)
    o = at_most(iv, FLAT_BAND)
    worst = ", ".join(f"{sc}: LR {v['worst_lr']:g} in {v['window'][0]:g}-{v['window'][1]:g}"
                      for sc, v in per_scale.items())
    return subcheck(o, iv, f"worst loss over the flattest {FLAT_DECADES:g}-decade LR window, above the best LR's: "
                    f"{iv.estimate:.3f} nats [{iv.lo:.3f}, {iv.hi:.3f}] over {iv.n} (scale, seed); flat means "
                    f"<= {FLAT_BAND} nats; worst {worst}"), iv, per_scale


def check(ctx: Ctx) -> dict:
    ref = ctx.reference
    if ctx.runs.is_empty() or ref is None:
        return result(11, NOT_RUN, {}, "no finished runs")
    if len(ctx.configs) < 2:
        return result(11, NOT_RUN, {"reference": ref}, "needs the reference and at least one variant that "
                      "removes a mitigation")
    lrs = sorted(ctx.lrs(ref))
    get_ref = _getter(ctx, ref)
    subs: dict[str, dict] = {}
    m: dict[str, Any] = {"reference": ref}
    subs["flat"], flat_iv, m["flatness_per_scale"] = flatness(ctx, ref)
    removed: set[str] = set()
    ignored = []
    for v in ctx.configs:
        if v == ref:
            continue
        d = roles.diff(ctx.configs[v], ctx.configs[ref])
        if not d or not d <= MITIGATION_KEYS:
            ignored.append(v)
            continue
        names = {n for n, mit in MITIGATIONS.items() if d & mit["keys"]}
        removed |= names
        acts, why = can_act(get_ref, _getter(ctx, v), lrs)
        iv, pairs = ctx.paired_effect(ref, v)
        nums = {"changes": sorted(names), **why, "per_pair": [{k: p[k] for k in ("scale", "seed", "diff")}
                                                              for p in pairs]}
        text = (f"sensitivity_trainable of {v} minus {ref}: {iv.estimate:+.3f} nats [{iv.lo:+.3f}, {iv.hi:+.3f}] "
                f"over {iv.n} (scale, seed) pairs" if iv.n else f"no (scale, seed) pair of {v} and {ref}")
        if not acts:
            subs[v] = subcheck(NOT_TESTABLE, iv, f"not testable: cannot act within {get_ref('train.steps')} steps "
                               f"({', '.join(f'{k} {x:.3g}' for k, x in why.items())}); {text}", **nums)
        elif not iv.n:
            subs[v] = subcheck(NOT_RUN, note=text, **nums)
        else:
            subs[v] = subcheck(directional(iv, REMOVAL_BAND), iv, text, **nums)
    notes = []
    for name, mit in MITIGATIONS.items():
        if name in removed:
            continue
        on = any(get_ref(k) != val for k, val in mit["off"].items())
        if not on:
            notes.append(f"{name} is off in the reference")
            continue
        acts, why = can_act(get_ref, _getter(ctx, ref, mit["off"]), lrs)
        if not acts:
            subs[f"remove_{name}"] = subcheck(NOT_TESTABLE, note=(
                f"not testable, not trained: removing {name} cannot act within {get_ref('train.steps')} steps "
                f"({', '.join(f'{k} {x:.3g}' for k, x in why.items())})"), **why)
        elif mit["other"]:
            subs[f"remove_{name}"] = subcheck(NOT_RUN, note=f"no variant removes {name}")
        else:
            notes.append(f"{name} removal not in this study (finding {1 if name == 'qk_layernorm' else 2} tests it)")
    if get_ref("model.parametrization") == "standard":
        notes.append("muParam is not part of the reference (finding 6 tests it)")
    if ignored:
        notes.append(f"not one-factor mitigation removals, ignored: {', '.join(ignored)}")
    outcome = combine({k: s["outcome"] for k, s in subs.items()})
    m["notes"] = notes
    note = "; ".join(f"{k}: {s['note']}" for k, s in subs.items() if s["note"])
    return result(11, outcome, m, note, subchecks=subs, effect=flat_iv,
                  effect_unit=f"nats, worst loss over the flattest {FLAT_DECADES:g}-decade LR window above the best "
                              "(per scale and seed)" if flat_iv else "", n_seeds=ctx.n_seeds(ref))


FINDING = register(Finding(
    number=11,
    title='Combined mitigations',
    claim='Combining the studied techniques trains small models that achieve similar losses across orders of '
          'magnitude of learning rate variation; with qk-layernorm and z-loss in place the other techniques '
          '(warm-up, independent weight decay, muParam) usually have little impact on the range of LRs that train '
          'but do affect the sensitivity within it.',
    source='Abstract and Sec. 1',
    quantity='worst loss over the flattest 2-decade LR window above the best (nats) with every mitigation on; '
             'change in LR sensitivity over trainable LRs when one mitigation is removed (nats)',
    rule=f'flat: the 95% t-interval over (scale, seed) of the worst loss in the flattest {FLAT_DECADES:g}-decade LR '
         f'window, above the best LR\'s, lies below {FLAT_BAND} nats (above it: not reproduced). Each removal that '
         'can act within the run: its paired (scale, seed) effect on sensitivity_trainable lies above 0 and outside '
         f'+-{REMOVAL_BAND} nats. A removal that cannot act (z-loss coefficient x steps < {ZLOSS_DOSE}; decay '
         f'exponent < {DECAY_DOSE}, from the configs) is not testable and not counted, whether or not it was trained. '
         'A testable removal of warm-up or weight decay missing from the study gives partial. Outcome: '
         'verdict.combine.',
    figures=('lr_vs_loss', 'sensitivity_vs_size'),
    check=check,
    thresholds=THRESHOLDS,
))
