"""Bootstrap confidence intervals over seeds and generated images (the leaderboard's intervals, :mod:`advbench.intervals`).

A score such as mitigation power is computed per seed from the images of a defended and an undefended cell;
its uncertainty comes from both levels, the training noise (seeds) and the sampling noise (which images were
generated). :func:`hierarchical_bootstrap` resamples both, as a two-level (cluster) bootstrap does: draw the
seeds with replacement, then, within each drawn seed, each of its image arrays with replacement, and compute
the statistic on that resample; the percentile interval of the resampled statistics is the confidence
interval. Paired arrays of one seed (the defended and the undefended images of the same class and seed) are
resampled independently, each from itself, and stay paired by seed.

How well it covers (tests/test_bootstrap.py, 8 seeds of 30 images, nominal 95 %): where the seeds differ only
by sampling noise the two levels count that noise twice and the interval is about 1.3 times too wide (coverage
≈ 1.0: conservative, the safe side for a claim that a defense mitigates); where the seeds' own spread
dominates, it covers about 87 %, the usual shortfall of percentile intervals on few clusters. With one to
three seeds, read an interval as a lower bound on the uncertainty from training noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate (the statistic on the data as they are) and its percentile interval."""

    point: float
    low: float
    high: float
    confidence: float

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (e.g. a defense that mitigates, with confidence)."""
        return self.low > 0 or self.high < 0


def hierarchical_bootstrap(groups: Sequence[Sequence[np.ndarray]], per_group: Callable[..., float],
                           n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                           combine: Callable[[np.ndarray], float] = np.mean) -> Interval:
    """Bootstrap ``combine(per_group(*arrays) for each group)``.

    ``groups``: one entry per seed, each a tuple of 1-D arrays of per-image values (e.g. the defended and the
    undefended cell's values of one class); ``per_group(*arrays)`` turns one seed's arrays into its score, and
    ``combine`` the seeds' scores into the statistic (their mean by default). Random draws come from
    ``numpy.random.default_rng(seed)`` in a fixed order (per resample: the seed indices, then for each drawn seed
    each array's indices), so an interval is reproducible and can be recomputed with plain numpy.
    """
    point, stats = bootstrap_stats(groups, per_group, lambda scores: np.atleast_1d(combine(scores)), n_resamples,
                                   seed)
    low, high = percentile_interval(stats, confidence)
    return Interval(float(point[0]), float(low[0]), float(high[0]), confidence)


def bootstrap_stats(groups: Sequence[Sequence[np.ndarray]], per_group: Callable[..., Any],
                    combine: Callable[[np.ndarray], np.ndarray], n_resamples: int = 2000, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The vector form behind :func:`hierarchical_bootstrap`: ``per_group`` may return a vector of features and
    ``combine`` maps the seeds' stacked features (seeds × features) to a vector of statistics, so one pass of
    resampling gives several statistics (mitigation power, legal impact, MP-AUC, a delay) from the same draws.
    Returns the statistics on the data as they are and the ``n_resamples`` × statistics resampled ones."""
    if not groups or any(len(g) == 0 or any(len(np.asarray(a)) == 0 for a in g) for g in groups):
        raise ValueError("every group needs at least one non-empty array of values")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive number, got {n_resamples}")
    data = [[np.asarray(a, dtype=float) for a in g] for g in groups]
    point = np.asarray(combine(np.array([per_group(*g) for g in data])), dtype=float)
    rng = np.random.default_rng(seed)
    stats = np.empty((n_resamples, point.size))
    for r in range(n_resamples):
        picked = rng.integers(0, len(data), size=len(data))
        scores = []
        for i in picked:
            arrays = [a[rng.integers(0, len(a), size=len(a))] for a in data[i]]
            scores.append(per_group(*arrays))
        stats[r] = combine(np.array(scores))
    return point, stats


def percentile_interval(stats: np.ndarray, confidence: float = 0.95, min_defined: float = 0.95
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``stats`` (resamples × statistics): the percentile interval. A statistic that is NaN (undefined)
    in more than ``1 - min_defined`` of the resamples has a NaN interval; otherwise its NaNs are left out."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    alpha = (1 - confidence) / 2
    stats = np.asarray(stats, dtype=float).reshape(len(stats), -1)
    low, high = np.full(stats.shape[1], np.nan), np.full(stats.shape[1], np.nan)
    for j in range(stats.shape[1]):
        column = stats[:, j][~np.isnan(stats[:, j])]
        if len(column) and len(column) >= min_defined * len(stats):
            low[j], high[j] = np.quantile(column, [alpha, 1 - alpha])
    return low, high
