"""The statistics a report shows for a group of runs (scipy.stats for the t quantile), and how a
metric's value is shown."""

import math
import statistics


def describe(values: list[float]) -> dict:
    """n, mean, std (n - 1), 95% CI half-width (Student t), min, max; None where undefined."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None, "min": None, "max": None}
    from scipy import stats  # imported once a report has values: start-up stays light

    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else None
    ci = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else None
    return {"n": n, "mean": mean, "std": std, "ci95": ci, "min": min(values), "max": max(values)}


def number(value: float) -> str:
    """A metric as the console shows it: four decimals (an accuracy, a loss), or three significant
    digits for one under 0.001 (a regressor's loss), which four decimals would show as 0.0000."""
    return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
