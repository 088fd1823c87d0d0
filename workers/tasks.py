"""Celery tasks: thin, idempotent wrappers over library calls.

Retries with backoff are for infrastructure faults only (database or broker connection
errors, a verifier process that could not start); a proof's own failure is a verdict, never an
exception, so it is never retried.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.exc import OperationalError

from workers.app import app

# Infrastructure errors worth a retry. Not SandboxUnavailable: that is a configuration error.
RETRYABLE = (OperationalError, ConnectionError, TimeoutError, OSError)

_backends: dict[tuple, Any] = {}
_backends_lock = threading.Lock()


def _backend(itp: str, opts: dict[str, Any]):
    """One warm verifier backend per worker process and configuration."""
    from verifier import backend_from_options

    key = (itp, tuple(sorted(opts.items())))
    with _backends_lock:
        if key not in _backends:
            _backends[key] = backend_from_options(itp, **opts)
        return _backends[key]


def _time_limit(timeout: float, n: int) -> float:
    # Above the verifier's own timeout for every proof in the chunk, plus start-up.
    return timeout * max(n, 1) + 120


@app.task(bind=True, autoretry_for=RETRYABLE, retry_backoff=True, retry_backoff_max=120,
          max_retries=8, acks_late=True, reject_on_worker_lost=True)
def verify_attempts(self, db_url: str, itp: str, attempt_ids: list[int], timeout: float,
                    verifier_opts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Verify the given stored attempts that have no verdict yet and store their verdicts."""
    from db.session import get_engine
    from prover.checking import verify_pending

    # the whole task in one verifier batch: the trusted compile + recheck stage is paid once
    stats = verify_pending(get_engine(db_url), _backend(itp, verifier_opts or {}),
                           timeout=timeout, attempt_ids=attempt_ids,
                           chunk=max(len(attempt_ids), 1))
    return {"attempts": stats.attempts, "unique": stats.unique, "seconds": stats.seconds}


@app.task(bind=True, autoretry_for=RETRYABLE, retry_backoff=True, retry_backoff_max=120,
          max_retries=8, acks_late=True, reject_on_worker_lost=True)
def verify_proofs(self, itp: str, tasks: list[dict[str, Any]], timeout: float,
                  verifier_opts: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Verify proofs given inline (no database): verdict dicts in input order."""
    from verifier.types import ProofTask

    proof_tasks = [ProofTask(**t) for t in tasks]
    verdicts = _backend(itp, verifier_opts or {}).verify_batch(proof_tasks, timeout=timeout)
    return [v.to_dict() for v in verdicts]
