"""Fan work out to Celery workers and wait for it: the `--via-celery` paths."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from celery import group
from sqlalchemy import Engine

from db import queries
from db.session import session_scope
from verifier.types import ProofTask, Verdict
from workers.tasks import _time_limit, verify_attempts, verify_proofs


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def verify_pending_via_celery(
    engine: Engine,
    itp: str,
    *,
    run_id: int | None = None,
    attempt_ids: Sequence[int] | None = None,
    timeout: float,
    chunk: int = 32,
    verifier_opts: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Verify pending attempts on the `verify` queue, tens of proofs per task so warm
    verifier processes are reused. Copies of one proof go to the same task (verified once).
    Returns the number of attempts dispatched."""
    with session_scope(engine) as s:
        pending = queries.pending_checks(s, run_id=run_id, attempt_ids=attempt_ids)
    groups: dict[tuple[int, str], list[int]] = {}
    for p in pending:
        groups.setdefault((p.statement_id, p.proof_hash), []).append(p.attempt_id)
    # round-robin, not consecutive: slow proofs (often of neighbouring statements) spread over
    # tasks instead of piling up in one that then runs alone at the end
    unique = list(groups.values())
    n_batches = -(-len(unique) // chunk)
    batches = [[aid for g in unique[j::n_batches] for aid in g] for j in range(n_batches)]
    if not batches:
        return 0
    url = engine.url.render_as_string(hide_password=False)
    limit = _time_limit(timeout, chunk)
    job = group(
        verify_attempts.s(url, itp, ids, timeout, verifier_opts or {}).set(
            time_limit=limit, soft_time_limit=limit - 30
        )
        for ids in batches
    )
    result = job.apply_async()
    done = 0
    if progress:
        progress(0, len(batches))
    for r in result.results:
        r.get(disable_sync_subtasks=False, propagate=True)
        done += 1
        if progress:
            progress(done, len(batches))
    return len(pending)


def celery_checker(itp: str, timeout: float, verifier_opts: dict[str, Any] | None = None,
                   chunk: int = 32):
    """A `prover.eval.Checker` that verifies through the workers."""

    def check(engine: Engine, run_id: int, progress: Callable[[int, int], None]) -> None:
        verify_pending_via_celery(engine, itp, run_id=run_id, timeout=timeout, chunk=chunk,
                                  verifier_opts=verifier_opts, progress=progress)

    return check


def verify_tasks_via_celery(
    itp: str,
    tasks: Sequence[ProofTask],
    *,
    timeout: float,
    chunk: int = 32,
    verifier_opts: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Verdict]:
    """`prover verify --via-celery`: verdicts in input order, no database involved."""
    parts = _chunks(list(tasks), chunk)
    limit = _time_limit(timeout, chunk)
    job = group(
        verify_proofs.s(itp, [t.__dict__ for t in part], timeout, verifier_opts or {}).set(
            time_limit=limit, soft_time_limit=limit - 30
        )
        for part in parts
    )
    result = job.apply_async()
    verdicts: list[Verdict] = []
    for i, r in enumerate(result.results, 1):
        verdicts += [Verdict.from_dict(d) for d in r.get(disable_sync_subtasks=False)]
        if progress:
            progress(i, len(parts))
    return verdicts
