"""Verify stored attempts that have no verdict yet, and store their verdicts.

Identical (statement, helpers, proof) texts are verified once and the verdict is recorded
for every copy, so pass rates keep the multiplicity. Verdicts are written chunk by chunk: an
interrupted run re-verifies nothing already stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Engine

from db import queries
from db.session import session_scope
from verifier.types import Backend, ProofTask


@dataclass
class CheckStats:
    attempts: int = 0
    unique: int = 0
    seconds: float = 0.0  # wall time spent inside the verifier


def verify_pending(
    engine: Engine,
    backend: Backend,
    *,
    timeout: float,
    run_id: int | None = None,
    attempt_ids: Iterable[int] | None = None,
    chunk: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> CheckStats:
    """Check every pending attempt (of a run, or the given ids). `progress(done, total)` is
    called after each chunk with unique proofs checked so far."""
    import time

    with session_scope(engine) as s:
        pending = queries.pending_checks(s, run_id=run_id, attempt_ids=attempt_ids)
    groups: dict[tuple[int, str], list[queries.PendingCheck]] = {}
    for p in pending:
        groups.setdefault((p.statement_id, p.proof_hash), []).append(p)
    unique = list(groups.values())
    stats = CheckStats(attempts=len(pending), unique=len(unique))
    if progress:
        progress(0, len(unique))
    for start in range(0, len(unique), chunk):
        part = unique[start : start + chunk]
        tasks = [
            ProofTask(header=g[0].header, statement=g[0].formal_statement, proof=g[0].proof,
                      helpers=g[0].helpers, id=str(g[0].attempt_id))
            for g in part
        ]
        t0 = time.perf_counter()
        verdicts = backend.verify_batch(tasks, timeout=timeout)
        stats.seconds += time.perf_counter() - t0
        rows = {p.attempt_id: v.to_dict() for g, v in zip(part, verdicts) for p in g}
        with session_scope(engine) as s:
            queries.record_verdicts(s, rows)
        if progress:
            progress(min(start + chunk, len(unique)), len(unique))
    return stats
