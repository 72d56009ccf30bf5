"""Finding 8: Forecasting attention-logit growth (Sec. 3.4, Fig. 12).

Ported unchanged from the single claims module into the findings registry; its check is
still the pre-registry decision rule (see `rule`).
"""
from __future__ import annotations




import polars as pl

from .base import (Ctx, Finding, Threshold, by_value, compare_sensitivity, frac, from_bool, not_run, one_factor,
                   register, result)

FORECAST_MIN_SCORE = 0.8


def check(ctx: Ctx) -> dict:
    fc = ctx.forecast
    if not fc or fc.get("status") != "ok" or fc.get("backtest_status") != "ok":
        return not_run(8, f"forecast status: {fc.get('status', 'missing')}, backtest: {fc.get('backtest_status')}",
                       {"notes": fc.get("notes", [])})
    bt = fc.get("backtest", [])
    m = {"held_out_params": fc.get("held_out_params"), "threshold": fc.get("threshold"), "score": fc.get("score"),
         "n_scored": fc.get("n_scored"),
         "n_predicted_diverged": sum(bool(e["predicted_diverged"]) for e in bt),
         "n_observed_diverged": sum(bool(e["observed_diverged"]) for e in bt),
         "n_diverged_predicted_right": sum(bool(e["observed_diverged"] and e["predicted_diverged"]) for e in bt),
         "per_lr": [{k: e[k] for k in ("variant", "lr", "predicted", "observed_max_logit", "predicted_diverged",
                                       "observed_diverged")} for e in bt],
         "observed_threshold": fc.get("observed_threshold")}
    if m["score"] is None:
        return not_run(8, "no LR could be scored at the held-out size", m)
    if m["n_observed_diverged"] == 0:
        return not_run(8, "no run diverged at the held-out size, so there is no divergence to forecast", m)
    ok = m["score"] >= FORECAST_MIN_SCORE and m["n_diverged_predicted_right"] > 0
    return result(8, from_bool(ok), m)


FINDING = register(Finding(
    number=8,
    title='Forecasting attention-logit growth',
    claim='A quadratic fit of the max attention logit against model size, per LR, forecasts which larger runs diverge, and the fit closely extrapolates the value of the max attention logit.',
    source='Sec. 3.4, Fig. 12',
    quantity='backtest: fraction of LRs whose divergence at the held-out (largest) size was predicted right',
    rule="pre-registry rule: " + 'A quadratic fit of max attention logit vs model size (per LR) forecasts which larger runs diverge.',
    figures=('forecast', 'attn_logit_vs_lr'),
    check=check,
))
