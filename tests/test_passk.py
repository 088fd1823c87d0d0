"""pass@k estimator, bootstrap interval and self-correction chains."""

from __future__ import annotations

from math import comb

import pytest

from prover.passk import (
    PassAtK,
    blocked_pass_at_k,
    bootstrap_ci,
    chain_counts,
    chain_successes,
    counts,
    estimate_pass_at_k,
    mean_pass_at_k,
    pass_at_k,
)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (10, 0, 1, 0.0),  # c = 0
        (10, 0, 10, 0.0),
        (10, 10, 1, 1.0),  # c = n
        (10, 10, 10, 1.0),
        (10, 3, 1, 0.3),  # pass@1 = c/n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 1, 4, 1.0),  # n = k, one success
        (4, 0, 4, 0.0),  # n = k, none
        (6, 2, 3, 0.8),  # 1 - C(4,3)/C(6,3) = 1 - 4/20
        (8, 5, 4, 1.0),  # n - c < k
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomials_and_is_stable():
    for n, c, k in [(100, 7, 10), (64, 1, 32), (3200, 5, 3200 // 2)]:
        exact = 1 - comb(n - c, k) / comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9)
    assert 0 < pass_at_k(100_000, 1, 1) < 1e-4


def test_pass_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="k > n"):
        pass_at_k(4, 1, 8)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 0)
    with pytest.raises(TypeError):
        pass_at_k(4, 1.5, 1)


def test_mean_and_bootstrap():
    data = [(4, 0), (4, 4), (4, 1), (4, 2)]
    # pass@2 per problem: 0, 1, 0.5, 1 - C(2,2)/C(4,2) = 5/6
    assert mean_pass_at_k(data, 2) == pytest.approx((0 + 1 + 0.5 + 5 / 6) / 4)
    est = estimate_pass_at_k(data * 10, 2, seed=1)
    assert isinstance(est, PassAtK) and est.problems == 40
    assert est.ci_low <= est.value <= est.ci_high
    assert 0 <= est.ci_low < est.ci_high <= 1
    assert estimate_pass_at_k(data * 10, 2, seed=1) == est  # seeded
    assert "pass@2 = " in str(est) and "95% CI" in str(est)
    assert bootstrap_ci([0.5] * 7) == (0.5, 0.5)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)
    with pytest.raises(ValueError, match="k > n"):
        estimate_pass_at_k([(4, 1), (2, 1)], 3)


def test_bootstrap_interval_width_shrinks_with_more_problems():
    small = bootstrap_ci([0.0, 1.0] * 10, seed=0)
    large = bootstrap_ci([0.0, 1.0] * 500, seed=0)
    assert small[1] - small[0] > large[1] - large[0] > 0
    assert small[0] < 0.5 < small[1]


def test_chains():
    chains = [[False, False, True], [False, False, False], [True], []]
    assert chain_successes(chains) == [True, False, True, False]
    assert counts([True, False, True]) == (3, 2)
    assert chain_counts({"p1": chains, "p2": [[False]] * 3}) == {"p1": (4, 2), "p2": (3, 0)}
    n, c = chain_counts({"p": chains})["p"]
    assert pass_at_k(n, c, 1) == 0.5


def test_blocked_pass_at_k():
    outcomes = [False, False, True, False, False, False, False, False, True]
    assert (
        blocked_pass_at_k(outcomes, 4) == 0.5
    )  # blocks [F,F,T,F], [F,F,F,F]; leftover [T] ignored
    with pytest.raises(ValueError):
        blocked_pass_at_k(outcomes, 10)
