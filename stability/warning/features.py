"""Early-warning features, baseline scores and the failure-mode rule, from one run's metrics.

All functions take a run's `metrics.parquet` table (docs/metrics.md: one row per logged step,
`step` ascending) and read only the columns they need; a column a run did not log (a
zero-layer model has no attention columns) gives NaN features, never an error.

**Window.** Features at fraction `k` read only the rows with step <= k * steps_planned (the
first K% of the run's planned steps). They are dimensionless (ratios, decades, fractions of
the initial loss), so they transfer across model scales, run lengths and vocabularies.

**Failure-mode rule** (`failure_mode`). It reads the whole run. Each mechanism has a per-step
test; it *fires* at the first logged step from which its test holds on two consecutive
logged rows (or on the last row). The loss *excursion* fires the same way, with the test
"the training loss is above its step-0 value, or not finite" (`loss_excursion`). The two
logit-drift and epsilon mechanisms *count* only when they fired strictly before the loss
excursion (on a logged row whose loss had not yet left its initial value; a run without
an excursion: whenever they fired); attention logit growth counts whenever it fired
(MUST_PRECEDE; reasons below). A failed run's mode is the first mechanism in the order
below that counts; none counts -> `other`. A run that did not fail is `none`.

1. attention_logit_growth: max attention logit >= ATTN_LOGIT_MIN (1e4). The paper's own
   threshold (Wortsman et al. 2023, Sec. 3.4: every run above about 1e4 went on to diverge);
   qk-layernorm bounds logits near sqrt(head_dim) times the q/k gains (tens here).
2. output_logit_divergence: the RMS over tokens of log Z, sqrt(z_loss), has grown by
   >= LOGZ_DRIFT_MIN (2 nats) above its step-0 value: the finding-2 threshold `drift_min`
   of the findings registry (ordinary learning raises it by about 1.3 nats, z-loss included).
3. epsilon_collapse: the gradient RMS of block 0's first MLP matrix (the paper's epsilon
   probe; the all-parameter `grad_rms` where that is NaN) is <= EPS_RATIO_MAX (1) x AdamW's
   epsilon. At g_rms <= eps the denominator sqrt(v) + eps is dominated by eps, so the
   update m / (sqrt(v) + eps) is at least halved and shrinks like g / eps below it
   (finding 10: the update RMS collapses when the gradient RMS nears epsilon).

Why log Z drift and epsilon must precede the loss excursion (rule revised after the first
evaluation; decided from the mechanisms, before any planted or held-out result was looked
at again). Each mode is a cause of failure in the paper, and a cause is seen before its
effect. Output-logit divergence is a slow drift: log Z moves away from 0 while the loss is
still improving, and the loss degrades only later (Sec. 3.1.2, over a long horizon). Once
the loss has blown up (above its value at initialisation: everything learnt is gone), the
output logits are spread far apart (CE = log Z - z_target exceeds its value at near-uniform
logits) and log Z jumps by many nats within the same few steps, whatever made the loss
blow up; a drift observed only from the excursion on is its consequence and names nothing.
Epsilon collapse is a stall (Sec. 3.4: the updates shrink, the loss never blows up); a
blown-up, saturated network's gradients can sink below epsilon as a consequence. A failed
run where neither preceded the blow-up and attention did not fire is `other` (e.g. a plain
LR that is too high with every mitigation on).
Why attention logit growth is exempt: its signal is not driven by the loss. The max
attention logit is q.k / sqrt(d) of layer-normed inputs, so it grows with the product of
the query and key weights' scales, which high-LR updates inflate step by step (Sec. 3.1.1),
and qk-layernorm, which bounds exactly this quantity (tens here, 1e4 is three orders
beyond), removes those failures at the same LR: the paper's intervention evidence that the
growth is the cause. With qk-layernorm on, the logits reach 1e4 only where the layernorm
gains themselves grow, at LRs far above any a study uses: a user's trial run (s0, LR 10,
seed 0, the default study's settings) peaked at 1.85e4 and is named attention logit growth,
and the planted LR-10 `other` runs peaked at 9.1e3 and 9.2e3, 8% under the cut. So at such
LRs the rule can name attention for a plain too-high LR: a known limit, not a reason to move
the paper's threshold. And at these runs' logging resolution the order is often unobservable:
the issue's reference case (a tiny no-qk-layernorm run at LR 1, logged every 5 steps) has
its loss at 11 nats (from 5.9) on the first logged update, its max logit already at 1.2e3
(from 3) there, and crosses 1e4 on the next row; requiring precedence would call the
paper's own example `other`.
Order, not first crossing, still decides among the mechanisms that count: the attention
mechanism is the paper's early instability, and a run whose logits pass 1e4 has a
saturated softmax whatever else happens; epsilon damping is a slow stall, named only where
neither logit signal counts.
(History: a first draft named the mechanism that crossed first; the issue's reference case,
a tiny no-qk-layernorm run at LR 1, crosses the log Z threshold at step 5 and the attention
one at step 10 in one blow-up, so the order was fixed instead, before any evaluation was
run. That rule then named every plain too-high-LR blow-up `output_logit_divergence` (0 of
4 planted `other` runs right), because any blow-up inflates log Z by more than 2 nats; the
precedence condition above is the fix.)
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

ATTN_LOGIT_MIN = 1e4
LOGZ_DRIFT_MIN = 2.0
EPS_RATIO_MAX = 1.0
MUST_PRECEDE = ("output_logit_divergence", "epsilon_collapse")  # count only before the loss excursion
MODES = ("attention_logit_growth", "output_logit_divergence", "epsilon_collapse", "other", "none")
PAPER_LOGIT_RULE = 1e4  # baseline 1: max logit > 1e4 at the probe step (the paper's rule)
SPIKE_WINDOW_STEPS = 128  # baseline 3: OLMo-core's skip-step window (steps) ...
SPIKE_SIGMAS = 6.0  # ... and its threshold in standard deviations

FEATURES = (
    "attn_logit_log10",     # log10 of the last max attention logit in the window
    "attn_logit_growth",    # decades of max-logit growth since step 0
    "attn_logit_rate",      # decades per 1% of planned steps, between the window's last two probes
    "attn_entropy_drop",    # log10(min attention entropy at step 0 / at the window's end)
    "logz_drift",           # RMS log Z growth since step 0, as a fraction of its step-0 value
    "grad_spike",           # log10(max / median gradient norm) over the window's updates
    "grad_trend",           # log10(last / first gradient norm) in the window
    "grad_eps_log10",       # log10(min gradient RMS (block-0 MLP) / AdamW epsilon)
    "update_rms_log10",     # log10 of the last unscaled Adam update RMS (block-0 MLP)
    "loss_change",          # (last loss - step-0 loss) / step-0 loss; inf once the loss is non-finite
    "loss_best_drop",       # (step-0 loss - lowest loss) / step-0 loss
    "loss_rebound",         # (last loss - lowest loss) / step-0 loss
)
BASELINES = ("paper_logit", "loss_above_init", "spike_z")


def _values(m: pl.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows where column `name` is finite; empty when it is absent."""
    if name not in m.columns or "step" not in m.columns:
        return np.zeros(0), np.zeros(0)
    steps = m["step"].cast(pl.Float64).to_numpy()
    vals = m[name].cast(pl.Float64, strict=False).fill_null(float("nan")).to_numpy()
    ok = np.isfinite(vals)
    return steps[ok], vals[ok]


def _nonfinite(m: pl.DataFrame, name: str) -> bool:
    """Whether column `name` holds a logged value that is NaN or infinite."""
    if name not in m.columns:
        return False
    v = m[name].cast(pl.Float64, strict=False).drop_nulls().to_numpy()
    return bool(len(v) and not np.isfinite(v).all())


def _first(m: pl.DataFrame, *names: str) -> tuple[np.ndarray, np.ndarray]:
    """`_values` of the first of `names` holding any finite value."""
    for n in names:
        s, v = _values(m, n)
        if len(v):
            return s, v
    return np.zeros(0), np.zeros(0)


def _log10(x: float, floor: float = 1e-30) -> float:
    return math.log10(max(x, floor)) if math.isfinite(x) else math.nan


def window(metrics: pl.DataFrame, k: float, steps_planned: int) -> pl.DataFrame:
    """The rows with step <= k * steps_planned (k a fraction in (0, 1]).

    Raises ValueError for k outside (0, 1] or steps_planned < 1.
    """
    if not 0 < k <= 1:
        raise ValueError(f"k must be a fraction in (0, 1], got {k}")
    if steps_planned < 1:
        raise ValueError(f"steps_planned must be >= 1, got {steps_planned}")
    return metrics.filter(pl.col("step") <= k * steps_planned).sort("step")


def has_window(metrics: pl.DataFrame, k: float, steps_planned: int) -> bool:
    """Whether the first k of the run holds step 0's row and at least one logged update after it."""
    w = window(metrics, k, steps_planned)
    return w.height >= 2 and (w["step"] > 0).any() and (w["step"] == 0).any()


def features(metrics: pl.DataFrame, k: float, steps_planned: int, eps: float) -> dict[str, float]:
    """The FEATURES of one run from its first k * steps_planned steps (NaN where a signal is absent).

    metrics: the run's metrics table; k: fraction of planned steps in (0, 1]; eps: the run's
    AdamW epsilon (optim.eps). Dimensionless values (see FEATURES). Raises ValueError as `window`.
    """
    w = window(metrics, k, steps_planned)
    out = dict.fromkeys(FEATURES, math.nan)
    s, v = _values(w, "max_attn_logit")
    if len(v):
        out["attn_logit_log10"] = _log10(v[-1])
        if s[0] == 0:
            out["attn_logit_growth"] = _log10(v[-1]) - _log10(v[0])
        if len(v) >= 2 and s[-1] > s[-2]:
            out["attn_logit_rate"] = (_log10(v[-1]) - _log10(v[-2])) / (100 * (s[-1] - s[-2]) / steps_planned)
    s, v = _values(w, "attn_entropy_min")
    if len(v) and s[0] == 0:
        out["attn_entropy_drop"] = _log10(v[0], 1e-6) - _log10(v[-1], 1e-6)
    s, v = _values(w, "z_loss")
    if len(v) >= 2 and s[0] == 0 and v[0] > 0:
        out["logz_drift"] = (math.sqrt(v[-1]) - math.sqrt(v[0])) / math.sqrt(v[0])
    s, v = _values(w, "grad_norm")
    if len(v):
        out["grad_spike"] = _log10(v.max() / max(float(np.median(v)), 1e-30))
        out["grad_trend"] = _log10(v[-1] / max(v[0], 1e-30))
    s, v = _first(w, "grad_rms_mlp0", "grad_rms")
    if len(v) and eps > 0:
        out["grad_eps_log10"] = _log10(v.min() / eps)
    s, v = _first(w, "update_rms_mlp0", "update_rms")
    if len(v):
        out["update_rms_log10"] = _log10(v[-1])
    s, v = _values(w, "loss")
    if len(v) >= 2 and s[0] == 0 and v[0] > 0:
        out["loss_change"] = (v[-1] - v[0]) / v[0]
        out["loss_best_drop"] = (v[0] - v.min()) / v[0]
        out["loss_rebound"] = (v[-1] - v.min()) / v[0]
    if _nonfinite(w, "loss"):  # the loss went non-finite inside the window: as far above loss_0 as it gets
        out["loss_change"] = out["loss_rebound"] = math.inf
    return out


def _rolling_z(steps: np.ndarray, v: np.ndarray, span: float) -> float:
    """Largest (v_i - mean) / std of v_i against the earlier values within `span` steps (>= 2 of them)."""
    best = 0.0
    for i in range(len(v)):
        prev = v[(steps < steps[i]) & (steps >= steps[i] - span)]
        if len(prev) >= 2:
            sd = prev.std()
            z = (v[i] - prev.mean()) / sd if sd > 0 else (math.inf if v[i] > prev.mean() else 0.0)
            best = max(best, z)
    return best


def baselines(metrics: pl.DataFrame, k: float, steps_planned: int) -> dict[str, float]:
    """The BASELINES' scores at fraction k (higher = more likely to fail).

    paper_logit: the last max attention logit logged in the window (the paper's probe read at
    the window's end; its rule is > PAPER_LOGIT_RULE); NaN without attention.
    loss_above_init: last training loss in the window minus step 0's (nats; rule > 0); +inf
    when the loss went non-finite.
    spike_z: OLMo-core style: the largest z-score of the loss or the gradient norm at a logged
    step against the earlier logged values of the last SPIKE_WINDOW_STEPS steps (rule >=
    SPIKE_SIGMAS); 0 when the window holds fewer than 3 such values.
    """
    w = window(metrics, k, steps_planned)
    s, v = _values(w, "max_attn_logit")
    paper = float(v[-1]) if len(v) else math.nan
    s, v = _values(w, "loss")
    if _nonfinite(w, "loss"):
        above = math.inf
    else:
        above = float(v[-1] - v[0]) if len(v) >= 2 and s[0] == 0 else math.nan
    span = SPIKE_WINDOW_STEPS
    z = max(_rolling_z(*_values(w, "loss"), span), _rolling_z(*_values(w, "grad_norm"), span))
    return {"paper_logit": paper, "loss_above_init": above, "spike_z": z}


# ---- failure modes -----------------------------------------------------------------------

def _fires(steps: np.ndarray, ok: np.ndarray) -> int | None:
    """First step from which `ok` holds on two consecutive rows (or on the last row); None if never."""
    for i in range(len(ok)):
        if ok[i] and (i == len(ok) - 1 or ok[i + 1]):
            return int(steps[i])
    return None


def loss_excursion(metrics: pl.DataFrame) -> int | None:
    """The first logged step > 0 from which the training loss stays above its step-0 value
    (two consecutive logged rows, or the last row; a non-finite loss counts as above), or
    None: the run's loss never left its initial value (module docstring: the rule)."""
    if "loss" not in metrics.columns or "step" not in metrics.columns or not metrics.height:
        return None
    steps = metrics["step"].cast(pl.Float64).to_numpy()
    loss = metrics["loss"].cast(pl.Float64, strict=False).fill_null(float("nan")).to_numpy()
    s0, v0 = _values(metrics.filter(pl.col("step") == 0), "loss")
    if not len(v0):
        return None
    above = ~np.isfinite(loss) | (loss > v0[0])
    later = steps > 0
    return _fires(steps[later], above[later])


def mechanisms(metrics: pl.DataFrame, eps: float) -> dict[str, dict[str, Any]]:
    """Each mechanism's evidence over the whole run.

    Returns {mode: {"fired_at_step": step or None, "value": the decisive statistic (peak logit,
    peak RMS log Z drift in nats, lowest gradient-RMS / eps ratio), "threshold": ...,
    "signal": the column read, "loss_excursion_step": `loss_excursion` (the same for every
    mode), "counts": whether it fired, and for MUST_PRECEDE modes strictly before the loss
    excursion}} for the three modes of the rule (module docstring); "value" is None when the
    run did not log the signal.
    """
    out: dict[str, dict[str, Any]] = {}
    s, v = _values(metrics, "max_attn_logit")
    out["attention_logit_growth"] = {
        "signal": "max_attn_logit", "threshold": ATTN_LOGIT_MIN, "value": float(v.max()) if len(v) else None,
        "fired_at_step": _fires(s, v >= ATTN_LOGIT_MIN)}
    s, v = _values(metrics, "z_loss")
    if len(v) and s[0] == 0:
        d = np.sqrt(np.maximum(v, 0)) - math.sqrt(max(v[0], 0))
        out["output_logit_divergence"] = {"signal": "sqrt(z_loss) - its step-0 value (nats)",
                                          "threshold": LOGZ_DRIFT_MIN, "value": float(d.max()),
                                          "fired_at_step": _fires(s, d >= LOGZ_DRIFT_MIN)}
    else:
        out["output_logit_divergence"] = {"signal": "sqrt(z_loss) - its step-0 value (nats)",
                                          "threshold": LOGZ_DRIFT_MIN, "value": None, "fired_at_step": None}
    name = "grad_rms_mlp0" if len(_values(metrics, "grad_rms_mlp0")[1]) else "grad_rms"
    s, v = _values(metrics, name)
    r = v / eps if eps > 0 else np.full_like(v, math.inf)
    out["epsilon_collapse"] = {"signal": f"{name} / optim.eps", "threshold": EPS_RATIO_MAX,
                               "value": float(r.min()) if len(r) else None,
                               "fired_at_step": _fires(s, r <= EPS_RATIO_MAX)}
    x = loss_excursion(metrics)
    for mode, e in out.items():
        e["loss_excursion_step"] = x
        e["counts"] = e["fired_at_step"] is not None and (
            mode not in MUST_PRECEDE or x is None or e["fired_at_step"] < x)
    return out


def signature(metrics: pl.DataFrame, eps: float) -> tuple[str, dict[str, dict[str, Any]]]:
    """(mode, evidence): the first mechanism in MODES order that counts (`mechanisms`), or `other`.

    This is the rule's answer for a run known to have failed; `failure_mode` adds the `none`
    case. evidence: `mechanisms`.
    """
    ev = mechanisms(metrics, eps)
    counted = [m for m in MODES if m in ev and ev[m]["counts"]]
    return (counted[0] if counted else "other"), ev


def failure_mode(metrics: pl.DataFrame, eps: float, failed: bool) -> str:
    """The failure-mode label: `none` for a run that did not fail, else `signature`'s mode."""
    return signature(metrics, eps)[0] if failed else "none"
