"""Verdicts as measurements: outcomes, paired-seed intervals and how sub-checks combine.

Every finding's check ends in one of OUTCOMES. A comparison between two variants is an
effect with a 95% interval over paired observations (the same seed, hence the same data
order and initialisation, in both arms; one pair per (scale, seed)); the interval decides
the outcome, so a difference smaller than the seed-to-seed spread reads `inconclusive`.

Rules (fixed before any data; each check states its band and why):

    directional(effect, band)   claim "effect > 0"
        reproduced       lo > 0                      the whole interval on the claimed side
        not reproduced   hi < 0, or [lo, hi] inside [-band, band]   (opposite, or no effect)
        inconclusive     otherwise (the interval straddles 0 or the no-effect band)

    at_most(effect, band)       claim "effect <= band" (a cost that stays small, a curve within band)
        reproduced       hi < band
        not reproduced   lo > band
        inconclusive     otherwise

    equivalence(effect, band)   claim "no effect larger than band"
        reproduced       [lo, hi] inside [-band, band]
        not reproduced   lo > band or hi < -band
        inconclusive     otherwise

    combine(sub-checks)         all ran and reproduced -> reproduced; any not reproduced ->
                                not reproduced; any missing -> partial; else inconclusive;
                                none ran -> not run.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

import numpy as np
import scipy.stats

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
PARTIAL = "partial"
NOT_RUN = "not run"
NOT_TESTABLE = "not testable"  # a sub-check whose mechanism cannot act within the run (e.g. horizon)
OUTCOMES = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, PARTIAL, NOT_RUN)
CONFIDENCE = 0.95  # two-sided level of every interval on the findings page
MIN_PAIRS = 2  # a t-interval needs at least two paired observations; fewer gives an infinite one


@dataclass(frozen=True)
class Interval:
    """A mean over paired observations with its two-sided CONFIDENCE t-interval.

    estimate, lo, hi: in the unit of the observations (nats of LR sensitivity, decades...);
    n: number of paired observations; lo = -inf and hi = +inf when n < MIN_PAIRS.
    """

    estimate: float
    lo: float
    hi: float
    n: int
    method: str = "t"

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def t_interval(values: Iterable[float], level: float = CONFIDENCE) -> Interval:
    """Mean of `values` with a Student-t interval (n - 1 degrees of freedom).

    Non-finite values are dropped. With no values the estimate is NaN; with one value the
    interval is (-inf, inf): a single observation says nothing about its own noise.
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, -math.inf, math.inf, 0)
    mean = float(x.mean())
    if n < MIN_PAIRS:
        return Interval(mean, -math.inf, math.inf, n)
    se = float(x.std(ddof=1)) / math.sqrt(n)
    half = float(scipy.stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return Interval(mean, mean - half, mean + half, n)


def directional(iv: Interval, band: float = 0.0) -> str:
    """Outcome of the claim "effect > 0" (see the module docstring)."""
    if iv.n == 0 or not math.isfinite(iv.estimate):
        return INCONCLUSIVE
    if iv.lo > 0:
        return REPRODUCED
    if iv.hi < 0 or (band > 0 and -band <= iv.lo and iv.hi <= band):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def at_most(iv: Interval, band: float) -> str:
    """Outcome of the claim "effect <= band": directional on band - effect."""
    return directional(Interval(band - iv.estimate, band - iv.hi, band - iv.lo, iv.n, iv.method))


def equivalence(iv: Interval, band: float) -> str:
    """Outcome of the claim "|effect| <= band" (see the module docstring)."""
    if iv.n == 0 or not math.isfinite(iv.estimate):
        return INCONCLUSIVE
    if -band <= iv.lo and iv.hi <= band:
        return REPRODUCED
    if iv.lo > band or iv.hi < -band:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def combine(subchecks: Mapping[str, str | None]) -> str:
    """One outcome from named sub-check outcomes; None or NOT_RUN marks a missing one.

    NOT_TESTABLE sub-checks are reported but do not count: a finding whose every
    sub-check is untestable is `not run`.
    """
    ran = [o for o in subchecks.values() if o not in (None, NOT_RUN, NOT_TESTABLE)]
    missing = [o for o in subchecks.values() if o in (None, NOT_RUN)]
    if not ran:
        return NOT_RUN
    if NOT_REPRODUCED in ran:
        return NOT_REPRODUCED
    if missing:
        return PARTIAL
    if all(o == REPRODUCED for o in ran):
        return REPRODUCED
    return INCONCLUSIVE


def subcheck(outcome: str, interval: Interval | None = None, note: str = "", **measured) -> dict:
    """A sub-check record: {outcome, interval, note, ...numbers it was decided on}."""
    assert outcome in OUTCOMES or outcome == NOT_TESTABLE, outcome
    out = {"outcome": outcome, "note": note, **measured}
    if interval is not None:
        out["interval"] = interval.as_dict()
    return out
