"""Lean 4 backend over the leanprover-community/repl JSON protocol.

Modules: ``protocol`` (framing, reading replies; pure), ``header`` (headers, statements,
assembly of the checked text; pure), ``repl`` (one REPL process with deadlines), ``backend``
(:class:`LeanBackend`: pool and soundness ladder), ``standin`` (a replay stand-in for the
REPL, for tests where no Lean toolchain exists).

``LeanBackend`` is imported lazily so that the pure modules (and the stand-in) load without
the sandbox and pool machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verifier.lean.backend import LeanBackend

__all__ = ["LeanBackend"]


def __getattr__(name: str) -> Any:
    if name == "LeanBackend":
        from verifier.lean.backend import LeanBackend

        return LeanBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
