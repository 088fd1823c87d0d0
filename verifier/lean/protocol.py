"""The leanprover-community/repl wire protocol: framing and reading of replies.

Pure functions only; no processes here.

Framing, as the REPL implements it (facts from its ``Main.lean``):

* Requests are JSON objects separated by blank lines. The REPL reads lines until one that is
  blank after trimming; every non-blank line is right-trimmed and the pieces are joined with
  *no* separator, so a raw line break inside a JSON string disappears. A block starting with
  ``#`` or ``--`` is skipped; end of input stops the loop; a block that is not a JSON object
  the REPL understands makes it die with an uncaught error.
* Each request yields exactly one reply: pretty-printed JSON followed by a blank line. JSON
  string escaping guarantees that no blank line occurs inside a reply.

We only ever write single-line JSON (``json.dumps`` escapes line breaks), so joining lines is
a no-op for our own requests.

Replies (what the REPL means by them):

* command (``cmd``) → ``{"env": n, "messages"?: [...], "sorries"?: [...], "tactics"?: ...}``;
  ``env`` is the index of the new environment snapshot, allocated for every command.
* tactic (``tactic`` + ``proofState``) → ``{"proofState": n, "goals": [...],
  "proofStatus": "Completed" | "Incomplete: ..." | "Error: ...", "messages"?, "sorries"?}``.
* any request the REPL rejects → ``{"message": "..."}`` (``Unknown environment.``,
  ``Unknown proof state.``, ``Lean error:\\n...`` for a failing tactic, file errors).

Positions: ``line`` is 1-based, ``column`` 0-based and counted in code points.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

_LEAN_WS = " \t\r\n"

# "declaration uses 'sorry'" (older Lean) or "declaration uses `sorry`" (newer).
SORRY_WARNING_RE = re.compile(r"declaration uses ['`]sorry['`]")

_AXIOMS_RE = re.compile(r"^'(?P<name>.+?)' depends on axioms: \[(?P<axioms>.*)\]\s*$", re.DOTALL)
_NO_AXIOMS_RE = re.compile(r"^'(?P<name>.+?)' does not depend on any axioms\s*$", re.DOTALL)


class ProtocolError(ValueError):
    """Output that is not a reply of the REPL protocol."""


# --------------------------------------------------------------------------- framing


def encode_request(request: dict[str, Any]) -> bytes:
    """One request on the wire: single-line JSON, then a blank line."""
    if not isinstance(request, dict):
        raise TypeError("a REPL request is a JSON object")
    line = json.dumps(request, ensure_ascii=False, separators=(", ", ": "))
    assert "\n" not in line
    return (line + "\n\n").encode("utf-8")


def command(cmd: str, env: int | None = None) -> dict[str, Any]:
    """The only request shape the backend sends: source text, optionally on an environment.

    Never ``{"path": ...}`` (reads any file the REPL can see) nor pickling requests (write
    files): those are never built from untrusted input.
    """
    if not isinstance(cmd, str):
        raise TypeError("cmd must be a string")
    req: dict[str, Any] = {"cmd": cmd}
    if env is not None:
        if not isinstance(env, int) or isinstance(env, bool) or env < 0:
            raise ValueError(f"bad env {env!r}")
        req["env"] = env
    return req


def _lines(text: str) -> list[str]:
    """Lines split on "\\n" only, as Lean's ``getLine`` does (not on U+2028 etc.)."""
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _is_blank(line: str) -> bool:
    return line.strip(_LEAN_WS) == ""


def split_request_blocks(text: str) -> list[str]:
    """The queries the REPL would read from ``text``, joined exactly as it joins lines.

    Comment blocks (``#``/``--``) are kept; :func:`parse_request_block` says to skip them.
    """
    blocks: list[str] = []
    acc: list[str] = []
    for line in _lines(text):
        if _is_blank(line):
            if acc:
                blocks.append("".join(acc))
                acc = []
            # A lone blank line would reach the real REPL as the query "\n", which is not
            # JSON; our writer never sends one, and readers here just skip it.
        else:
            acc.append(line.rstrip(_LEAN_WS))
    if acc:
        blocks.append("".join(acc))
    return blocks


def is_skipped_block(block: str) -> bool:
    return block.startswith(("#", "--"))


def parse_request_block(block: str) -> dict[str, Any]:
    """JSON object of one request block; raises ProtocolError like the REPL would die."""
    try:
        value = json.loads(block, strict=False)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"Could not parse JSON: {e}") from None
    if not isinstance(value, dict):
        raise ProtocolError("Could not parse as a valid JSON command")
    return value


def parse_requests(text: str) -> list[dict[str, Any]]:
    """All requests of a transcript ``.in`` file, as the REPL reads them."""
    return [parse_request_block(b) for b in split_request_blocks(text) if not is_skipped_block(b)]


def parse_reply_block(block: str) -> dict[str, Any]:
    try:
        value = json.loads(block)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"reply is not JSON: {e}: {block[:200]!r}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"reply is not a JSON object: {block[:200]!r}")
    return value


def parse_replies(text: str) -> list[dict[str, Any]]:
    """All replies of a transcript ``.expected.out`` file (or of a captured stdout)."""
    out: list[dict[str, Any]] = []
    acc: list[str] = []
    for line in _lines(text):
        if _is_blank(line):
            if acc:
                out.append(parse_reply_block("".join(acc)))
                acc = []
        else:
            acc.append(line)
    if acc:
        out.append(parse_reply_block("".join(acc)))
    return out


class ReplyReader:
    """Incremental splitter of the REPL's stdout into reply blocks.

    ``feed`` bytes as they arrive; ``pop`` returns the next complete reply (parsed) or None.
    A block that does not parse raises ProtocolError: the process is not speaking the
    protocol any more and must be discarded.
    """

    def __init__(self, max_reply_bytes: int = 64 << 20) -> None:
        self._buf = bytearray()
        self._max = max_reply_bytes
        self._scanned = 0  # no blank line ends before this offset (keeps feeding linear)

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self._max and b"\n\n" not in self._buf:
            raise ProtocolError(f"reply larger than {self._max} bytes")

    @property
    def pending(self) -> int:
        """Bytes received and not yet returned (whitespace between replies excluded)."""
        return len(bytes(self._buf).strip(_LEAN_WS.encode()))

    def pop(self) -> dict[str, Any] | None:
        while True:
            # drop leading blank lines
            i = 0
            n = len(self._buf)
            while i < n and self._buf[i] in b" \t\r\n":
                i += 1
            if i:  # whitespace between replies; a reply itself starts with "{"
                del self._buf[:i]
                self._scanned = 0
            if not self._buf:
                return None
            end = _find_blank_line(self._buf, self._scanned)
            if end is None:
                self._scanned = max(0, self._buf.rfind(b"\n"))
                return None
            block_end, next_start = end
            block = bytes(self._buf[:block_end]).decode("utf-8", errors="replace")
            del self._buf[:next_start]
            self._scanned = 0
            if block.strip(_LEAN_WS):
                return parse_reply_block(block)


def _find_blank_line(buf: bytearray, start: int = 0) -> tuple[int, int] | None:
    """(end of block, start of the rest) for the first blank line in buf at or after the
    line break at ``start``, or None."""
    while True:
        nl = buf.find(b"\n", start)
        if nl < 0:
            return None
        # the line after nl: is it blank up to its own newline?
        j = nl + 1
        while j < len(buf) and buf[j] in b" \t\r":
            j += 1
        if j < len(buf) and buf[j] == 0x0A:
            return nl + 1, j + 1
        if j >= len(buf):
            return None
        start = nl + 1


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class ReplMessage:
    severity: str
    text: str
    line: int | None = None
    column: int | None = None
    end_line: int | None = None
    end_column: int | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    @property
    def is_sorry_warning(self) -> bool:
        return self.severity == "warning" and bool(SORRY_WARNING_RE.search(self.text))


class Outcome(str, enum.Enum):
    COMPLETE = "complete"  # accepted: no error, no sorry
    INCOMPLETE = "incomplete"  # sorry/admit, open goals or metavariables, no error
    ERROR = "error"  # Lean reported an error (elaboration, kernel, failing tactic)
    REPL_ERROR = "repl_error"  # the REPL refused the request (unknown env, bad request)


@dataclass(frozen=True)
class Interpretation:
    kind: str  # "command" | "tactic" | "refusal"
    outcome: Outcome
    env: int | None = None
    proof_state: int | None = None
    messages: tuple[ReplMessage, ...] = ()
    sorries: tuple[dict[str, Any], ...] = ()
    # "sorry" | "open_goals" | "metavariables" | "kernel" | "error" | "repl_error" | None
    reason: str | None = None
    detail: str = ""
    has_sorry: bool = False
    goals: tuple[str, ...] = field(default=())

    @property
    def errors(self) -> list[ReplMessage]:
        return [m for m in self.messages if m.is_error]


def _pos(d: Any) -> tuple[int | None, int | None]:
    if isinstance(d, dict):
        line, col = d.get("line"), d.get("column")
        return (line if isinstance(line, int) else None, col if isinstance(col, int) else None)
    return None, None


def parse_messages(raw: Any) -> tuple[ReplMessage, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ProtocolError("messages is not a list")
    out = []
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("data"), str):
            raise ProtocolError(f"malformed message {m!r:.200}")
        sev = m.get("severity")
        if sev not in ("error", "warning", "info", "information"):
            raise ProtocolError(f"unknown severity {sev!r}")
        line, col = _pos(m.get("pos"))
        end_line, end_col = _pos(m.get("endPos"))
        out.append(
            ReplMessage(
                severity="info" if sev == "information" else sev,
                text=m["data"],
                line=line,
                column=col,
                end_line=end_line,
                end_column=end_col,
            )
        )
    return tuple(out)


def _sorries(raw: Any) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        raise ProtocolError("sorries is not a list of objects")
    return tuple(raw)


def _classify(
    msgs: tuple[ReplMessage, ...], sorries: tuple, root_goals: bool = False
) -> tuple[Outcome, str | None, bool]:
    # with "rootGoals": true the REPL lists the theorem's root goals as "sorries" entries;
    # only the warning tells a real sorry then
    has_sorry = (bool(sorries) and not root_goals) or any(m.is_sorry_warning for m in msgs)
    errors = [m for m in msgs if m.is_error]
    if errors:
        kernel = any(m.text.startswith("(kernel)") for m in errors)
        return Outcome.ERROR, "kernel" if kernel else "error", has_sorry
    if has_sorry:
        return Outcome.INCOMPLETE, "sorry", True
    return Outcome.COMPLETE, None, False


def interpret(reply: dict[str, Any], request: dict[str, Any] | None = None) -> Interpretation:
    """What the REPL meant by one reply (command, tactic or refusal) to ``request``."""
    if not isinstance(reply, dict):
        raise ProtocolError("reply is not an object")
    if "proofStatus" in reply or ("proofState" in reply and "goals" in reply):
        return interpret_tactic(reply)
    if "env" in reply:
        return interpret_command(reply, root_goals=bool((request or {}).get("rootGoals")))
    if isinstance(reply.get("message"), str):
        return _refusal(reply)
    raise ProtocolError(f"unrecognised reply {json.dumps(reply)[:200]}")


def _refusal(reply: dict[str, Any]) -> Interpretation:
    text = reply["message"]
    if text.startswith("Lean error:"):
        # a tactic (or command) that Lean itself rejected: an error of the proof
        return Interpretation(
            "refusal", Outcome.ERROR, reason="error", detail=text,
            messages=(ReplMessage("error", text.removeprefix("Lean error:").lstrip("\n")),),
        )
    return Interpretation("refusal", Outcome.REPL_ERROR, reason="repl_error", detail=text)


def interpret_command(reply: dict[str, Any], *, root_goals: bool = False) -> Interpretation:
    env = reply.get("env")
    if not isinstance(env, int) or isinstance(env, bool):
        if isinstance(reply.get("message"), str):
            return _refusal(reply)
        raise ProtocolError(f"command reply without env: {json.dumps(reply)[:200]}")
    msgs = parse_messages(reply.get("messages"))
    sorries = _sorries(reply.get("sorries"))
    outcome, reason, has_sorry = _classify(msgs, sorries, root_goals)
    return Interpretation(
        "command", outcome, env=env, messages=msgs, sorries=sorries, reason=reason,
        has_sorry=has_sorry,
    )


def interpret_tactic(reply: dict[str, Any]) -> Interpretation:
    status = reply.get("proofStatus")
    ps = reply.get("proofState")
    msgs = parse_messages(reply.get("messages"))
    sorries = _sorries(reply.get("sorries"))
    goals = reply.get("goals") or []
    outcome, reason, has_sorry = _classify(msgs, sorries)
    status_text = status if isinstance(status, str) else ""
    if outcome is not Outcome.ERROR:
        if status_text.startswith("Error:"):
            outcome = Outcome.ERROR
            reason = "kernel" if "kernel" in status_text else "error"
        elif status_text.startswith("Incomplete:"):
            outcome = Outcome.INCOMPLETE
            low = status_text.lower()
            if "sorry" in low:
                reason, has_sorry = "sorry", True
            elif "metavariable" in low:
                reason = "metavariables"
            elif "goals" in low:
                reason = "open_goals"
            else:
                reason = reason or "incomplete"
        elif status_text == "Completed":
            pass  # outcome from messages/sorries (COMPLETE unless a sorry was reported)
        elif status is None:
            # older REPLs: no proofStatus; open goals mean incomplete
            if goals:
                outcome, reason = Outcome.INCOMPLETE, "open_goals"
        else:
            raise ProtocolError(f"unknown proofStatus {status!r}")
    return Interpretation(
        "tactic", outcome, proof_state=ps if isinstance(ps, int) else None, messages=msgs,
        sorries=sorries, reason=reason, detail=status_text, has_sorry=has_sorry,
        goals=tuple(g for g in goals if isinstance(g, str)),
    )


# --------------------------------------------------------------------------- #print axioms


@dataclass(frozen=True)
class AxiomsReport:
    name: str
    axioms: tuple[str, ...]


def parse_axioms_message(text: str) -> AxiomsReport | None:
    """``'n' depends on axioms: [a, b]`` / ``'n' does not depend on any axioms``."""
    m = _AXIOMS_RE.match(text.strip())
    if m:
        names = [a.strip() for a in re.split(r"[,\s]+", m.group("axioms")) if a.strip()]
        return AxiomsReport(m.group("name"), tuple(names))
    m = _NO_AXIOMS_RE.match(text.strip())
    if m:
        return AxiomsReport(m.group("name"), ())
    return None


def iter_blocks_of(stream: Iterable[str]) -> Iterator[str]:
    """Request blocks from an iterable of lines, joined as the REPL joins them (stand-in)."""
    acc: list[str] = []
    for line in stream:
        if _is_blank(line):
            if acc:
                yield "".join(acc)
                acc = []
        else:
            acc.append(line.rstrip(_LEAN_WS))
    if acc:
        yield "".join(acc)
