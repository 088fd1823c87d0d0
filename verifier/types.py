"""The verifier contract shared by every backend: tasks in, verdicts out.

Proof failures are data: a backend never raises for a proof's own failure, it returns a
Verdict. Exceptions are for infrastructure faults the caller may retry.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence


class Status(str, enum.Enum):
    PROVED = "proved"
    FAILED = "failed"
    TIMEOUT = "timeout"
    RESOURCE_LIMIT = "resource_limit"
    REJECTED_UNSOUND = "rejected_unsound"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class Message:
    """One diagnostic of the proof assistant. Lines are 1-based and relative to the proof
    text when the position falls inside it (``in_proof``), else to the assembled file."""

    severity: str  # "error" | "warning" | "info"
    text: str
    line: int | None = None
    column: int | None = None
    end_line: int | None = None
    end_column: int | None = None
    in_proof: bool = True


@dataclass(frozen=True)
class ProofTask:
    """Trusted header and statement, untrusted proof."""

    header: str
    statement: str
    proof: str
    id: str | None = None
    # Untrusted lemmas/definitions the model wrote before the theorem. They go after the
    # trusted header and before the trusted statement; ladder step 2 (the theorem has the
    # trusted statement's type, elaborated without them) keeps them from changing its meaning.
    helpers: str = ""


@dataclass
class Verdict:
    status: Status
    messages: list[Message] = field(default_factory=list)
    axioms: list[str] = field(default_factory=list)
    seconds: float = 0.0
    backend: str = ""
    backend_version: str = ""
    sandboxed: bool = True
    # short machine-readable cause, e.g. "sorry", "axiom_not_allowed", "statement_mismatch",
    # "kernel_bypass", "no_proof_found"; None when proved.
    reason: str | None = None

    @property
    def proved(self) -> bool:
        return self.status is Status.PROVED

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        d = dict(d)
        d["status"] = Status(d["status"])
        d["messages"] = [Message(**m) for m in d.get("messages", [])]
        return cls(**d)


class Backend(Protocol):
    """What every proof-assistant backend provides."""

    name: str

    def version(self) -> str: ...

    def verify_batch(self, tasks: Sequence[ProofTask], *, timeout: float) -> list[Verdict]:
        """Verdicts in input order. Warm processes are reused across the batch."""
        ...

    def check_statement(self, header: str, statement: str, *, timeout: float) -> Verdict:
        """Does the statement typecheck with a placeholder proof? PROVED means well-formed."""
        ...

    def close(self) -> None: ...
