"""Conjecture filters: pure functions over plain records.

Each filter takes a sequence of records and returns a :class:`FilterResult` (what is kept, in
input order, and what was dropped with a reason). None of them touches the database; the
pipeline reads the records with :mod:`conjecturer.store` and writes the outcome back.

- :func:`dedup` — alpha-normalized (theorem name, bound variables, whitespace, comments)
  against already-known statements and within the batch (the first occurrence is kept).
- :func:`check_validity` — the statement typechecks with a placeholder proof
  (``backend.check_statement``).
- :func:`decontaminate` — no normalized match with any evaluation statement, and optionally
  no n-gram overlap above a threshold.
- :func:`barely_provable` — at least one correct proof and pass rate <= 0.25, over at least 8
  attempts.
- :func:`elegance` — in each shared-lemma group of >= 2, drop the floor(20%) with the smallest
  shortest-proof-length / statement-length (proofs short for their statement: too easy for
  their size); ties broken by id, so the result is deterministic.
- relevance re-weighting lives in :mod:`conjecturer.relevance` (it needs embeddings).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from conjecturer.prompts import alpha_key

T = TypeVar("T")


@dataclass
class FilterResult(Generic[T]):
    kept: list[T] = field(default_factory=list)
    rejected: list[tuple[T, str]] = field(default_factory=list)

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for _, r in self.rejected:
            out[r] += 1
        return dict(out)


@dataclass(frozen=True)
class Candidate:
    """A parsed conjecture before it is stored."""

    index: int  # position in the generation batch (stable id for ties and provenance)
    itp: str
    header: str
    statement: str
    name: str
    seed_statement_id: int
    seed_attempt_id: int | None
    lemma: str
    completion: str = ""


@dataclass(frozen=True)
class ProofStats:
    """What selection needs to know about one conjecture after the prover attempted it."""

    id: int  # conjecture (or statement) id
    statement_id: int
    lemma: str
    statement_len: int
    attempts: int
    proved: int
    shortest_proof_len: int | None = None

    @property
    def pass_rate(self) -> float:
        return self.proved / self.attempts if self.attempts else 0.0


def _statement_of(x: Any) -> str:
    return x.statement


# ----------------------------------------------------------------------------- dedup


def dedup(
    items: Sequence[T],
    *,
    itp: str,
    existing: Iterable[str] = (),
    text: Callable[[T], str] = _statement_of,
) -> FilterResult[T]:
    """Drop items whose alpha-normalized statement equals a known statement's (``existing``:
    statement texts already in the dataset/database) or an earlier item's."""
    seen = {alpha_key(itp, s) for s in existing}
    res: FilterResult[T] = FilterResult()
    batch: set[str] = set()
    for it in items:
        k = alpha_key(itp, text(it))
        if k in seen:
            res.rejected.append((it, "duplicate_of_known"))
        elif k in batch:
            res.rejected.append((it, "duplicate_in_batch"))
        else:
            batch.add(k)
            res.kept.append(it)
    return res


# ----------------------------------------------------------------------------- validity


def check_validity(
    items: Sequence[T],
    check: Callable[[T], Any],
) -> FilterResult[T]:
    """Keep items for which ``check(item)`` is truthy or returns a verdict with ``.proved``
    (``backend.check_statement``: PROVED means the statement is well-formed)."""
    res: FilterResult[T] = FilterResult()
    for it in items:
        v = check(it)
        ok = getattr(v, "proved", v)
        if ok:
            res.kept.append(it)
        else:
            reason = getattr(v, "reason", None) or "ill_formed"
            res.rejected.append((it, f"invalid:{reason}"))
    return res


# ----------------------------------------------------------------------------- decontamination

_TOKEN = re.compile(r"\w+|[^\w\s]")


def _tokens(itp: str, statement: str) -> list[str]:
    return _TOKEN.findall(alpha_key(itp, statement))


def _ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def decontaminate(
    items: Sequence[T],
    eval_statements: Iterable[str],
    *,
    itp: str,
    ngram_n: int = 10,
    ngram_threshold: float | None = None,
    text: Callable[[T], str] = _statement_of,
) -> FilterResult[T]:
    """Drop items that match an evaluation statement after alpha-normalization; with
    ``ngram_threshold`` also those sharing at least that fraction of their token ``ngram_n``-
    grams (over the alpha-normalized text) with a single evaluation statement."""
    evals = list(eval_statements)
    keys = {alpha_key(itp, s) for s in evals}
    index: dict[tuple[str, ...], set[int]] = defaultdict(set)
    if ngram_threshold is not None:
        for i, s in enumerate(evals):
            for g in _ngrams(_tokens(itp, s), ngram_n):
                index[g].add(i)
    res: FilterResult[T] = FilterResult()
    for it in items:
        s = text(it)
        if alpha_key(itp, s) in keys:
            res.rejected.append((it, "contaminated:exact"))
            continue
        if ngram_threshold is not None:
            grams = _ngrams(_tokens(itp, s), ngram_n)
            shared: dict[int, int] = defaultdict(int)
            for g in grams:
                for i in index.get(g, ()):
                    shared[i] += 1
            best = max(shared.values(), default=0) / len(grams) if grams else 0.0
            if best >= ngram_threshold:
                res.rejected.append((it, "contaminated:ngram"))
                continue
        res.kept.append(it)
    return res


# ----------------------------------------------------------------------------- selection


def barely_provable(
    stats: Sequence[ProofStats], *, max_pass_rate: float = 0.25, min_attempts: int = 8
) -> FilterResult[ProofStats]:
    """At least one correct proof and pass rate <= ``max_pass_rate`` over >= ``min_attempts``."""
    res: FilterResult[ProofStats] = FilterResult()
    for s in stats:
        if s.attempts < min_attempts:
            res.rejected.append((s, "too_few_attempts"))
        elif s.proved == 0:
            res.rejected.append((s, "unproved"))
        elif s.pass_rate > max_pass_rate:
            res.rejected.append((s, "too_easy"))
        else:
            res.kept.append(s)
    return res


def elegance_ratio(s: ProofStats) -> float:
    if not s.shortest_proof_len:
        return math.inf
    return s.shortest_proof_len / max(s.statement_len, 1)


def elegance(
    stats: Sequence[ProofStats], *, drop_fraction: float = 0.2
) -> FilterResult[ProofStats]:
    """Within each shared-lemma group of at least 2, drop the ``floor(drop_fraction * n)``
    items with the smallest shortest-proof / statement length ratio (ties: lower id first)."""
    groups: dict[str, list[ProofStats]] = defaultdict(list)
    for s in stats:
        groups[s.lemma].append(s)
    dropped: set[int] = set()
    for members in groups.values():
        if len(members) < 2:
            continue
        k = math.floor(drop_fraction * len(members) + 1e-9)
        ranked = sorted(members, key=lambda s: (elegance_ratio(s), s.id))
        dropped.update(s.id for s in ranked[:k])
    res: FilterResult[ProofStats] = FilterResult()
    for s in stats:
        if s.id in dropped:
            res.rejected.append((s, "inelegant"))
        else:
            res.kept.append(s)
    return res
