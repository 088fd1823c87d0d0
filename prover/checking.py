"""Verify stored attempts that have no verdict yet, and store their verdicts.

Identical (statement, helpers, proof) texts are verified once and the verdict is recorded
for every copy, so pass rates keep the multiplicity. "Once" holds across calls too: a pending
copy of a proof that already has a verdict in the same run (an earlier chunk, correction
round or interrupted invocation) gets that verdict without reaching the verifier. Verdicts
are written chunk by chunk: an interrupted run re-verifies nothing already stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, aliased

from db import queries
from db.models import Attempt, Verdict, VerdictStatus
from db.session import session_scope
from verifier.types import Backend, ProofTask

# Verdicts that say something about the proof, not about the machine that checked it: only
# these are copied to later copies of the proof (an internal error is retried instead).
_REUSABLE = tuple(s for s in VerdictStatus if s is not VerdictStatus.INTERNAL_ERROR)


@dataclass
class CheckStats:
    attempts: int = 0
    unique: int = 0  # proofs sent to the verifier
    reused: int = 0  # pending attempts that took a verdict already stored for the same proof
    seconds: float = 0.0  # wall time spent inside the verifier


def _stored_verdicts(session: Session, attempt_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """For pending attempts: a verdict already stored for another attempt of the same run with
    the same statement and proof text (attempt id -> verdict dict)."""
    pend, other = aliased(Attempt), aliased(Attempt)
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(attempt_ids), 1000):
        ids = list(attempt_ids[start : start + 1000])
        rows = session.execute(
            select(pend.id, Verdict)
            .join(other, (other.statement_id == pend.statement_id)
                  & (other.proof_hash == pend.proof_hash) & (other.run_id == pend.run_id)
                  & (other.id != pend.id))
            .join(Verdict, Verdict.attempt_id == other.id)
            .where(pend.id.in_(ids), pend.run_id.is_not(None), Verdict.status.in_(_REUSABLE))
            .order_by(pend.id, Verdict.id)
        )
        for aid, v in rows:
            out.setdefault(aid, {
                "status": v.status.value, "reason": v.reason, "messages": v.messages,
                "axioms": v.axioms, "seconds": v.seconds, "backend": v.backend,
                "backend_version": v.backend_version, "sandboxed": v.sandboxed,
            })
    return out


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
    with session_scope(engine) as s:
        pending = queries.pending_checks(s, run_id=run_id, attempt_ids=attempt_ids)
        known = _stored_verdicts(s, [p.attempt_id for p in pending]) if pending else {}
        if known:
            queries.record_verdicts(s, known)
    stats = CheckStats(attempts=len(pending), reused=len(known))
    groups: dict[tuple[int, str], list[queries.PendingCheck]] = {}
    for p in pending:
        if p.attempt_id not in known:
            groups.setdefault((p.statement_id, p.proof_hash), []).append(p)
    unique = list(groups.values())
    stats.unique = len(unique)
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
        if len(verdicts) != len(tasks):
            raise RuntimeError(f"verifier returned {len(verdicts)} verdicts for {len(tasks)} proofs")
        rows = {p.attempt_id: v.to_dict() for g, v in zip(part, verdicts) for p in g}
        with session_scope(engine) as s:
            queries.record_verdicts(s, rows)
        if progress:
            progress(min(start + chunk, len(unique)), len(unique))
    return stats
