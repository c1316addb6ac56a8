"""The one confidence interval of the project: a mean and its two-sided Student's t interval."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Mean of the finite `values` and the half-width of its two-sided t interval: NaN with fewer
    than 2 values (one seed has no interval; it is drawn without a bar and shown without brackets)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan
    if len(values) < 2:
        return float(values.mean()), math.nan
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


def ratio_interval(numerators, denominators, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """mean(numerators) / mean(denominators) of paired samples (one pair per seed) and its
    percentile bootstrap interval over the pairs (scipy.stats.bootstrap, 9999 resamples, seeded);
    NaN with fewer than 3 pairs."""
    numerators, denominators = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    keep = np.isfinite(numerators) & np.isfinite(denominators)
    numerators, denominators = numerators[keep], denominators[keep]
    if len(numerators) == 0 or denominators.mean() == 0:
        return math.nan, math.nan, math.nan
    ratio = float(numerators.mean() / denominators.mean())
    if len(numerators) < 3:
        return ratio, math.nan, math.nan

    def statistic(top, bottom, axis=-1):
        return np.mean(top, axis=axis) / np.mean(bottom, axis=axis)

    result = stats.bootstrap((numerators, denominators), statistic, paired=True, vectorized=True,
                             confidence_level=level, n_resamples=9999, method="percentile",
                             random_state=np.random.default_rng(seed))
    return ratio, float(result.confidence_interval.low), float(result.confidence_interval.high)
