"""Statistics of the report: bootstrap intervals, p values, detectable differences, the share of the upper bound's gain
closed."""

import numpy as np
import pytest

from pipeline import _stats


def test_bootstrap_intervals_cover_the_mean_and_shrink_with_more_items():
    rng = np.random.default_rng(1)
    small, big = rng.random(23) < 0.3, rng.random(2000) < 0.3
    lo, hi = _stats.bootstrap_mean_ci([small])
    assert lo <= small.mean() <= hi and hi - lo > 0.2  # 23 items: a wide interval
    lo2, hi2 = _stats.bootstrap_mean_ci([big])
    assert hi2 - lo2 < 0.06
    assert _stats.bootstrap_mean_ci([small], samples=0) is None
    # one item more right out of 23 is not a measurable win
    better = small.copy()
    better[np.argmin(better)] = True
    lo, hi = _stats.bootstrap_delta_ci([better], [small])
    assert lo <= 0 <= hi
    lo, hi = _stats.bootstrap_delta_ci([np.ones(200)], [np.zeros(200)])
    assert lo == hi == 1.0


def test_a_clear_paired_gain_has_a_small_p_and_no_gain_has_p_one():
    rng = np.random.default_rng(0)
    base = [rng.integers(0, 2, 40).astype(float) for _ in range(3)]
    better = [np.maximum(b, rng.integers(0, 2, 40)) for b in base]  # right wherever the base is, and more
    assert _stats.paired_permutation_p(better, base, samples=2000) < 0.01
    assert _stats.paired_permutation_p(base, base, samples=2000) == 1.0


def test_p_value_matches_an_exact_sign_test():
    from scipy.stats import binomtest

    base = [np.array([0.0] * 12 + [1.0] * 8)]
    model = [np.array([1.0] * 9 + [0.0] * 3 + [1.0] * 8)]  # 9 wins, 0 losses among the discordant items
    exact = binomtest(9, 9, 0.5).pvalue
    assert _stats.paired_permutation_p(model, base, samples=20000, seed=1) == pytest.approx(exact, abs=0.003)


def test_detectable_difference_shrinks_with_more_items():
    rng = np.random.default_rng(0)

    def mde(n):
        base = [rng.integers(0, 2, n).astype(float)]
        model = [np.where(rng.random(n) < 0.2, 1 - base[0], base[0])]
        return _stats.detectable_difference([_stats.standard_error(model, base)], base)

    small, large = mde(25), mde(400)
    assert 0.15 < small < 0.45 and large < small / 2.5
    same = [np.array([0.0, 1.0, 1.0, 0.0])]
    assert _stats.detectable_difference([_stats.standard_error(same, same)], same) > 0  # falls back to the base's noise


def test_gap_closed_is_the_ratio_of_gains_with_an_interval():
    base = [np.zeros(50)]
    upper = [np.r_[np.ones(20), np.zeros(30)]]  # +0.4
    half = [np.r_[np.ones(10), np.zeros(40)]]  # +0.2
    gap = _stats.bootstrap_ratio(half, upper, base, samples=500)
    assert gap["value"] == pytest.approx(0.5)
    assert gap["ci"][0] < 0.5 < gap["ci"][1] and gap["ci"][1] - gap["ci"][0] < 0.6
    assert _stats.bootstrap_ratio(half, base, base, samples=100) is None  # the upper bound gained nothing: undefined
