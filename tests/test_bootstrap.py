"""Bootstrap intervals (issue 21 groundwork): equal to a plain numpy computation with the same RNG seed, and
covering the true value about as often as they claim."""

import numpy as np
import pytest

from advbench.bootstrap import hierarchical_bootstrap
from advbench.leaderboard import relative_degradation


def _mp(defended, baseline):
    """One seed's mitigation power on a distance (lower = better forgery): relative degradation of the means."""
    return relative_degradation(float(np.mean(baseline)), float(np.mean(defended)), higher_is_better=False)


# A hand-made table: three seeds, each with the defended and the undefended identity distances of its images.
TABLE = [
    (np.array([0.30, 0.35, 0.28, 0.40]), np.array([0.20, 0.22, 0.18, 0.25])),
    (np.array([0.33, 0.31, 0.36]), np.array([0.21, 0.19, 0.24])),
    (np.array([0.25, 0.29, 0.27, 0.31, 0.26]), np.array([0.23, 0.20, 0.22, 0.21, 0.24])),
]


def test_interval_equals_a_numpy_computation_with_the_same_seed():
    got = hierarchical_bootstrap(TABLE, _mp, n_resamples=500, confidence=0.9, seed=7)
    rng = np.random.default_rng(7)
    stats = []
    for _ in range(500):
        seeds = rng.integers(0, 3, size=3)
        per_seed = []
        for s in seeds:
            defended = TABLE[s][0][rng.integers(0, len(TABLE[s][0]), size=len(TABLE[s][0]))]
            baseline = TABLE[s][1][rng.integers(0, len(TABLE[s][1]), size=len(TABLE[s][1]))]
            per_seed.append((defended.mean() - baseline.mean()) / baseline.mean())
        stats.append(np.mean(per_seed))
    low, high = np.quantile(stats, [0.05, 0.95])
    assert got.point == pytest.approx(np.mean([(d.mean() - b.mean()) / b.mean() for d, b in TABLE]))
    assert (got.low, got.high) == pytest.approx((low, high))
    assert got.low < got.point < got.high and got.excludes_zero()


def _coverage(between: float, seed: int) -> float:
    """How often the 95 % interval of the mean holds the true mean 1: 8 seeds of 30 images each, the seeds'
    means spread by ``between`` (training noise), the images by 1 (sampling noise)."""
    rng = np.random.default_rng(seed)
    covered = 0
    for t in range(100):
        groups = [(rng.normal(1.0 + rng.normal(0.0, between), 1.0, size=30),) for _ in range(8)]
        interval = hierarchical_bootstrap(groups, lambda a: float(a.mean()), n_resamples=300, seed=t)
        covered += interval.low <= 1.0 <= interval.high
    return covered / 100


def test_coverage_is_conservative_for_image_noise_and_near_nominal_for_seed_noise():
    # Only sampling noise: resampling both levels counts it twice, so the interval is wide (covers ~always).
    assert _coverage(between=0.0, seed=0) >= 0.95
    # Seed noise dominates: 8 clusters make any percentile interval a little narrow (measured 0.87 here).
    assert 0.78 <= _coverage(between=1.0, seed=1) <= 0.97


def test_one_seed_still_has_image_noise_and_bad_input_is_refused():
    one = hierarchical_bootstrap(TABLE[:1], _mp, n_resamples=300, seed=1)
    assert one.low < one.point < one.high  # resampling the images alone gives an interval
    for groups, message in (([], "at least one"), ([(np.array([]),)], "at least one")):
        with pytest.raises(ValueError, match=message):
            hierarchical_bootstrap(groups, _mp)
    with pytest.raises(ValueError, match="confidence"):
        hierarchical_bootstrap(TABLE, _mp, confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        hierarchical_bootstrap(TABLE, _mp, n_resamples=0)


def _record(illegal, legal, seed, defense):
    """A one-budget record with one illegal and one legal class and their per-image identity distances."""
    classes = {"a": {"role": "illegal", "values": {"d": float(np.mean(illegal))}, "per_image": {"d": list(illegal)}},
               "b": {"role": "legal", "values": {"d": float(np.mean(legal))}, "per_image": {"d": list(legal)}}}
    point = {"budget": 10, "classes": classes, "illegal": {"d": float(np.mean(illegal))},
             "legal": {"d": float(np.mean(legal))}}
    return {"cell_id": f"{defense}{seed}", "cell": {"seed": seed, "budgets": [10], "attack": {"params": {"steps": 10}}},
            "metrics": {"primary": "d", "higher_is_better": {"d": False}, "curve": [point], **point}}


def test_row_intervals_equal_the_two_level_bootstrap_of_the_same_draws():
    """The leaderboard's MP interval on a hand-made table is hierarchical_bootstrap's on the per-image arrays,
    drawn in the same order (per seed: illegal defended, illegal undefended, legal defended, legal undefended)."""
    from advbench.intervals import row_intervals

    legal = [np.array([0.1, 0.2, 0.15]), np.array([0.12, 0.11]), np.array([0.2, 0.1, 0.3, 0.2])]
    pairs = [(_record(d, legal[s], s, "x"), _record(b, legal[s] * 0.9, s, "none"))
             for s, (d, b) in enumerate(TABLE)]
    got = row_intervals(pairs, "d", higher_is_better=False, n_resamples=400, seed=3)
    groups = [(d, b, legal[s], legal[s] * 0.9) for s, (d, b) in enumerate(TABLE)]
    want = hierarchical_bootstrap(groups, lambda d, b, *_: _mp(d, b), n_resamples=400, seed=3)
    assert (got["mitigation_power_ci_low"], got["mitigation_power_ci_high"]) == pytest.approx((want.low, want.high))
    li = hierarchical_bootstrap(groups, lambda d, b, ld, lb: _mp(ld, lb), n_resamples=400, seed=3)
    assert (got["legal_impact_ci_low"], got["legal_impact_ci_high"]) == pytest.approx((li.low, li.high))
    assert got["ci_over"] == "3 seeds and images" and got["mitigates"].startswith("yes")
    assert np.isnan(got["illegal_delay_ci_low"])  # one budget: no delay


def test_one_seed_without_per_image_values_has_no_interval():
    from advbench.intervals import row_intervals

    d, b = _record(TABLE[0][0], TABLE[0][1], 0, "x"), _record(TABLE[0][1], TABLE[0][1], 0, "none")
    for rec in (d, b):
        for row in rec["metrics"]["classes"].values():
            del row["per_image"]
    got = row_intervals([(d, b)], "d", higher_is_better=False)
    assert np.isnan(got["mitigation_power_ci_low"]) and got["mitigates"].startswith("undetermined")
    with_images = row_intervals([(_record(TABLE[0][0], TABLE[0][1], 0, "x"),
                                  _record(TABLE[0][1], TABLE[0][1], 0, "none"))], "d", higher_is_better=False)
    assert with_images["ci_over"] == "1 seed and images" and with_images["mitigation_power_ci_low"] > 0
