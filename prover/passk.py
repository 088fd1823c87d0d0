"""pass@k: the unbiased estimator, its mean over problems, a bootstrap interval, and helpers
for self-correction chains.

For a problem with ``n`` samples of which ``c`` are correct, the unbiased estimate of the
probability that at least one of ``k`` samples is correct is ``1 - C(n-c, k) / C(n, k)``,
computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` to avoid huge binomials.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem (``n`` samples, ``c`` correct)."""
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or int(v) != v:
            raise TypeError(f"{name} must be an integer, got {v!r}")
    n, c, k = int(n), int(c), int(k)
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if k > n:
        raise ValueError(
            f"pass@{k} cannot be estimated from {n} samples (k > n); draw at least {k} samples "
            f"per problem or report pass@{n}"
        )
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def per_problem_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> list[float]:
    """``counts``: (n, c) per problem."""
    return [pass_at_k(n, c, k) for n, c in counts]


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    vals = per_problem_pass_at_k(counts, k)
    if not vals:
        raise ValueError("no problems")
    return sum(vals) / len(vals)


def bootstrap_ci(
    values: Sequence[float],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling problems with replacement."""
    if not values:
        raise ValueError("no values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = random.Random(seed)
    m = len(values)
    means = sorted(sum(values[rng.randrange(m)] for _ in range(m)) / m for _ in range(resamples))
    alpha = (1 - confidence) / 2
    lo = means[min(int(alpha * resamples), resamples - 1)]
    hi = means[min(int((1 - alpha) * resamples), resamples - 1)]
    return lo, hi


@dataclass(frozen=True)
class PassAtK:
    k: int
    value: float
    ci_low: float
    ci_high: float
    problems: int
    confidence: float = 0.95

    def __str__(self) -> str:
        pct = round(self.confidence * 100)
        return (
            f"pass@{self.k} = {100 * self.value:.1f}% "
            f"({pct}% CI {100 * self.ci_low:.1f}-{100 * self.ci_high:.1f}, {self.problems} problems)"
        )


def estimate_pass_at_k(
    counts: Sequence[tuple[int, int]],
    k: int,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PassAtK:
    """Mean unbiased pass@k over problems with a seeded bootstrap interval over problems."""
    vals = per_problem_pass_at_k(counts, k)
    if not vals:
        raise ValueError("no problems")
    lo, hi = bootstrap_ci(vals, resamples=resamples, confidence=confidence, seed=seed)
    return PassAtK(k, sum(vals) / len(vals), lo, hi, len(vals), confidence)


def counts(outcomes: Sequence[bool]) -> tuple[int, int]:
    """(n, c) from per-sample booleans."""
    return len(outcomes), sum(1 for o in outcomes if o)


def chain_successes(chains: Iterable[Sequence[bool]]) -> list[bool]:
    """Self-correction: one chain = the first attempt plus its correction rounds; it succeeds
    if any round succeeds. Each chain then counts as one sample for pass@k."""
    return [any(rounds) for rounds in chains]


def chain_counts(
    chains_by_problem: Mapping[str, Sequence[Sequence[bool]]],
) -> dict[str, tuple[int, int]]:
    """Per problem: (number of chains, number of successful chains)."""
    return {p: counts(chain_successes(ch)) for p, ch in chains_by_problem.items()}


def blocked_pass_at_k(outcomes: Sequence[bool], k: int) -> float:
    """STP-style pass@k: the fraction of disjoint blocks of ``k`` samples with a success
    (a leftover partial block is ignored). Biased; report with :func:`pass_at_k`."""
    if k < 1 or k > len(outcomes):
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={len(outcomes)}")
    blocks = len(outcomes) // k
    return sum(any(outcomes[b * k : (b + 1) * k]) for b in range(blocks)) / blocks
