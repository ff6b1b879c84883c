"""Bootstrap confidence intervals over seeds and generated images (issue 21 groundwork, not yet in the tables).

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
    if not groups or any(len(g) == 0 or any(len(np.asarray(a)) == 0 for a in g) for g in groups):
        raise ValueError("every group needs at least one non-empty array of values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive number, got {n_resamples}")
    data = [[np.asarray(a, dtype=float) for a in g] for g in groups]
    point = float(combine(np.array([per_group(*g) for g in data])))
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    for r in range(n_resamples):
        picked = rng.integers(0, len(data), size=len(data))
        scores = []
        for i in picked:
            arrays = [a[rng.integers(0, len(a), size=len(a))] for a in data[i]]
            scores.append(per_group(*arrays))
        stats[r] = combine(np.array(scores))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(point, float(low), float(high), confidence)
