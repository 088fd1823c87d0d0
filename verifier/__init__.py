"""Sound, sandboxed checking of untrusted proofs against trusted statements.

    from verifier import verify
    v = verify(header, statement, "Proof. intros; lia. Qed.", itp="coq", timeout=30)
    v.status, v.reason, v.messages

Backends are created with ``get_backend(itp, **opts)``; the module-level helpers keep one
backend per (itp, workers) alive for the life of the process.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Sequence
from typing import Any

from .sandbox import Limits, Sandbox, SandboxUnavailable
from .types import Backend, Message, ProofTask, Status, Verdict

__all__ = [
    "Backend",
    "Limits",
    "Message",
    "ProofTask",
    "Sandbox",
    "SandboxUnavailable",
    "Status",
    "Verdict",
    "backend_from_options",
    "check_statement",
    "get_backend",
    "verify",
    "verify_batch",
]

DEFAULT_TIMEOUT = 60.0
_cache: dict[tuple[str, int], Any] = {}
_cache_lock = threading.Lock()


def get_backend(itp: str = "coq", **opts: Any) -> Backend:
    """A new backend. ``itp``: "coq" (CoqBackend options: sandbox, pool_size, mode, coqchk,
    prefilter, ...) or "lean" (project_dir, repl_cmd, sandbox, pool_size, allow_native_decide)."""
    itp = itp.lower()
    if itp in ("coq", "rocq"):
        from .coq import CoqBackend

        return CoqBackend(**opts)
    if itp in ("lean", "lean4"):
        from .lean import LeanBackend  # written separately; imported lazily

        return LeanBackend(**opts)
    raise ValueError(f"unknown proof assistant {itp!r} (expected 'coq' or 'lean')")


def backend_from_options(
    itp: str,
    *,
    workers: int = 1,
    unsafe_no_sandbox: bool = False,
    lean_project: str | None = None,
    allow_native_decide: bool = False,
) -> Backend:
    """A backend from plain (JSON-serializable) options, as the CLI and Celery tasks pass them."""
    opts: dict[str, Any] = {"pool_size": max(1, workers)}
    if unsafe_no_sandbox:
        opts["sandbox"] = Sandbox(enabled=False)
    if itp.lower() in ("lean", "lean4"):
        opts |= {"project_dir": lean_project, "allow_native_decide": allow_native_decide}
    return get_backend(itp, **opts)


def _shared(itp: str, workers: int) -> Backend:
    key = (itp.lower(), workers)
    with _cache_lock:
        b = _cache.get(key)
        if b is None:
            b = get_backend(itp, pool_size=workers)
            _cache[key] = b
        return b


@atexit.register
def _close_shared() -> None:
    with _cache_lock:
        for b in _cache.values():
            try:
                b.close()
            except Exception:
                pass
        _cache.clear()


def verify(
    header: str,
    statement: str,
    proof: str,
    *,
    itp: str = "coq",
    timeout: float = DEFAULT_TIMEOUT,
    backend: Backend | None = None,
) -> Verdict:
    b = backend or _shared(itp, 1)
    return b.verify_batch([ProofTask(header, statement, proof)], timeout=timeout)[0]


def verify_batch(
    tasks: Sequence[ProofTask],
    *,
    itp: str = "coq",
    timeout: float = DEFAULT_TIMEOUT,
    workers: int = 1,
    backend: Backend | None = None,
) -> list[Verdict]:
    """Verdicts in input order; ``workers`` warm processes check the batch in parallel."""
    b = backend or _shared(itp, max(1, workers))
    return b.verify_batch(list(tasks), timeout=timeout)


def check_statement(
    header: str,
    statement: str,
    *,
    itp: str = "coq",
    timeout: float = DEFAULT_TIMEOUT,
    backend: Backend | None = None,
) -> Verdict:
    b = backend or _shared(itp, 1)
    return b.check_statement(header, statement, timeout=timeout)
