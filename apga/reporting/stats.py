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
