"""Verifier-guided self-correction turns (the Goedel-Prover-V2 protocol).

After a failed attempt the conversation is extended with the model's answer and a user turn
that shows, for at most 8 errors, the code around each error (4 lines before, 1 after) with the
error span wrapped in ``<error></error>`` (multi-line spans cut at 6 lines) and the error
message, then asks for an analysis and a corrected complete proof.

Positions: :class:`verifier.types.Message` lines are 1-based and relative to the proof text
when ``in_proof``; columns are 0-based (Lean's convention). Pass the code the model should see
and ``proof_line_offset`` = the number of lines before the proof in it
(:func:`attempt_code` builds both). Messages outside the proof are shown without an excerpt:
their lines refer to the verifier's assembled file, which need not match ``code``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from prover.generation.base import ChatMessage

INTRO = (
    "The proof is not correct. Following is the compilation error message, where we use "
    "<error></error> to signal the position of the error."
)
MAX_ERRORS = 8
LINES_BEFORE = 4
LINES_AFTER = 1
MAX_SPAN_LINES = 6

_LANG = {"lean": ("Lean 4", "lean4"), "coq": ("Coq", "coq")}


class MessageLike(Protocol):
    severity: str
    text: str
    line: int | None
    column: int | None
    end_line: int | None
    end_column: int | None
    in_proof: bool


def attempt_code(
    statement: str, proof: str, *, header: str = "", helpers: str = ""
) -> tuple[str, int]:
    """The code shown to the model for an attempt (header, helpers, trusted statement, proof)
    and the number of lines before the proof in it (``proof_line_offset``)."""
    prefix = header
    if helpers.strip():
        prefix += helpers.strip() + "\n\n"
    prefix += statement
    if not prefix.endswith("\n"):
        prefix += "\n"
    return prefix + proof, prefix.count("\n")


def _mark(lines: list[str], msg: MessageLike, offset: int) -> str | None:
    """The excerpt with the error span tagged, or None when the position is unusable."""
    if msg.line is None or not msg.in_proof:
        return None
    start = msg.line + offset
    if not 1 <= start <= len(lines):
        return None
    s = start - 1
    col = min(max(msg.column or 0, 0), len(lines[s]))
    if msg.end_line is None or msg.end_line + offset < start:
        e, ecol = s, len(lines[s])
    else:
        e = min(msg.end_line + offset, len(lines)) - 1
        ecol = (
            len(lines[e]) if msg.end_column is None else min(max(msg.end_column, 0), len(lines[e]))
        )
        if e == s and ecol < col:
            ecol = len(lines[s])
    if e - s + 1 > MAX_SPAN_LINES:
        e = s + MAX_SPAN_LINES - 1
        ecol = len(lines[e])
    shown = []
    for i in range(s, e + 1):
        line = lines[i]
        a = col if i == s else 0
        b = ecol if i == e else len(line)
        text = line
        if i == e:
            text = text[:b] + "</error>" + text[b:]
        if i == s:
            text = text[:a] + "<error>" + text[a:]
        shown.append(text)
    before = lines[max(0, s - LINES_BEFORE) : s]
    after = lines[e + 1 : e + 1 + LINES_AFTER]
    return "\n".join([*before, *shown, *after])


def build_correction_turn(
    code: str,
    errors: Sequence[MessageLike],
    *,
    proof_line_offset: int = 0,
    itp: str = "lean",
    max_errors: int = MAX_ERRORS,
) -> str:
    """The user turn that reports a failed attempt. Only ``severity == "error"`` messages are
    listed; when there are none (e.g. a ``declaration uses 'sorry'`` warning is why the proof
    was rejected) the warnings are listed instead."""
    lang_name, fence = _LANG.get(itp.lower(), _LANG["lean"])
    msgs = [m for m in errors if m.severity == "error"] or [
        m for m in errors if m.severity == "warning"
    ]
    lines = code.split("\n")
    parts = [INTRO, ""]
    if not msgs:
        parts += ["The proof did not compile or left goals unsolved (no message available).", ""]
    for k, m in enumerate(msgs[:max_errors], 1):
        parts.append(f"Error {k}:")
        parts.append("")
        excerpt = _mark(lines, m, proof_line_offset)
        if excerpt is not None:
            parts += ["Corresponding Code:", f"```{fence}", excerpt, "```", ""]
        elif m.line is not None:
            parts += [f"(at line {m.line} of the checked file, outside the proof)", ""]
        parts += [f"Error Message: {m.text.strip()}", ""]
    if len(msgs) > max_errors:
        parts += [f"[Omitted {len(msgs) - max_errors} more errors]", ""]
    parts.append(
        f"Before producing the corrected {lang_name} code, give a detailed analysis of the "
        f"errors above and how to fix them. Then write the complete corrected {lang_name} "
        f"code, including the theorem statement, in one ```{fence} block."
    )
    return "\n".join(parts)


def correction_conversation(
    original: str | Sequence[ChatMessage],
    previous_completion: str,
    errors: Sequence[MessageLike],
    *,
    code: str | None = None,
    proof_line_offset: int = 0,
    itp: str = "lean",
    max_errors: int = MAX_ERRORS,
) -> list[ChatMessage]:
    """The next chat input: the original conversation (a completion prompt becomes one user
    message), the model's failed answer, and the correction turn.

    ``code`` is the text the error positions refer to; by default ``previous_completion``
    itself, which is right for completion formats (the completion is the proof, offset 0).
    For chat answers pass ``attempt_code(statement, proof, ...)``'s code and offset."""
    if isinstance(original, str):
        conv: list[ChatMessage] = [{"role": "user", "content": original}]
    else:
        conv = [dict(m) for m in original]
    conv.append({"role": "assistant", "content": previous_completion})
    turn = build_correction_turn(
        previous_completion if code is None else code,
        errors,
        proof_line_offset=proof_line_offset,
        itp=itp,
        max_errors=max_errors,
    )
    conv.append({"role": "user", "content": turn})
    return conv
