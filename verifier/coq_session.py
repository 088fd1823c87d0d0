"""Low-level Coq plumbing: a small lexer for Coq text and interactive ``coqtop`` processes.

``CoqProcess`` drives ``coqtop -emacs`` through pipes. Every request is followed by a sentinel
command (``Locate <random nonce>.``) whose answer the checked text cannot predict, so the end of a
request's output is found without trusting anything the proof prints. Reads are capped and
bounded by a wall-clock deadline; on timeout, crash or flood the caller kills the process group.

``WarmSession`` is a pool item: a coqtop that has loaded the ``Require`` sentences of a proof
and its header (kept as a stack, so that the next key only loads what differs) and remembers
the state id to return to (``BackTo``) after each attempt.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .pool import tree_rss_bytes
from .sandbox import Sandbox, kill_group
from .types import Message

# --------------------------------------------------------------------------- lexing


class LexError(ValueError):
    pass


def mask(text: str, *, strict: bool = True) -> str:
    """``text`` with comments blanked and string contents replaced by ``_`` (same length).

    Raises LexError on an unterminated comment or string, as Coq's lexer would; with
    ``strict=False`` (model output that may be cut off) the rest of the text is blanked."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        if text.startswith("(*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("(*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*)", j):
                    depth, j = depth - 1, j + 2
                elif text[j] == '"':
                    j = _skip_string(text, j, strict)
                else:
                    j += 1
            if depth and strict:
                raise LexError("unterminated comment")
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        elif text[i] == '"':
            j = _skip_string(text, i, strict)
            for k in range(i + 1, j - 1):
                if out[k] != "\n":
                    out[k] = "_"
            i = j
        else:
            i += 1
    return "".join(out)


def _skip_string(text: str, i: int, strict: bool = True) -> int:
    """Index just after the string literal starting at ``text[i] == '"'`` ("" escapes a quote)."""
    j = i + 1
    while True:
        k = text.find('"', j)
        if k < 0:
            if strict:
                raise LexError("unterminated string")
            return len(text) + 1
        if text.startswith('""', k):
            j = k + 2
            continue
        return k + 1


_END = re.compile(r"(?<!\.)\.(?=\s|$)")


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) spans of the ``.``-terminated sentences of ``text`` (end after the dot).
    Trailing text without a terminating dot is returned as a last span too."""
    m = mask(text)
    spans, start = [], 0
    for e in _END.finditer(m):
        spans.append((start, e.end()))
        start = e.end()
    if m[start:].strip():
        spans.append((start, len(text)))
    return spans


_STDLIB_FROM = re.compile(r"\bFrom\s+Stdlib\b")
_STDLIB_QUAL = re.compile(r"(?<![\w.'])Stdlib\.(?=\w)")


def rocq_to_coq(text: str) -> str:
    """Rocq 9 spellings to Coq 8.16: ``From Stdlib`` -> ``From Coq``, ``Stdlib.X`` -> ``Coq.X``."""
    return _STDLIB_QUAL.sub("Coq.", _STDLIB_FROM.sub("From Coq", text))


_REQUIRE = re.compile(r"^\s*(From\s+[\w.]+\s+)?Require(\s+(Import|Export))?\s+[\w.\s]+\.$", re.DOTALL)


def split_requires(proof: str) -> tuple[str, str, int]:
    """Split leading ``Require`` sentences off a text: (requires, rest, offset of rest).

    ``requires`` is normalized (comments dropped, whitespace collapsed, one per line) so that
    texts loading the same libraries share a warm session."""
    try:
        spans = sentences(proof)
        m = mask(proof)
    except LexError:
        return "", proof, 0
    reqs, cut = [], 0
    for s, e in spans:
        if _REQUIRE.match(m[s:e]):
            reqs.append(" ".join(m[s:e].split()))
            cut = e
        else:
            break
    return "\n".join(reqs), proof[cut:], cut


def key_sentences(key: str) -> list[str]:
    """The sentences of a key built by joining ``split_requires`` outputs (one per line)."""
    return [ln for ln in key.split("\n") if ln.strip()]


_THM = re.compile(
    r"^\s*(?:#\[[^\]]*\]\s*)?(?:Local\s+|Global\s+)?"
    r"(Theorem|Lemma|Fact|Remark|Corollary|Proposition|Property|Example)\s+([A-Za-z_][\w']*)",
)


def theorem_name(statement: str) -> str | None:
    try:
        m = _THM.match(mask(statement))
    except LexError:
        return None
    return m.group(2) if m else None


# --------------------------------------------------------------------------- output parsing

_PROMPT = re.compile(r"<prompt>(.*?) < (\d+) \|(.*?)\| (\d+) < </prompt>", re.DOTALL)
_TAGGED = re.compile(r"<(infomsg|warning)>(.*?)</\1>", re.DOTALL)
_LOC = re.compile(r"(?:Toplevel input|File \"[^\"]*\", line (\d+)), characters (\d+)-(\d+):")


@dataclass
class Prompt:
    name: str
    state: int
    proofs: str


def prompts(out: str) -> list[Prompt]:
    return [Prompt(m.group(1), int(m.group(2)), m.group(3)) for m in _PROMPT.finditer(out)]


def infomsgs(out: str) -> list[str]:
    return [m.group(2) for m in _TAGGED.finditer(out) if m.group(1) == "infomsg"]


@dataclass
class RawError:
    text: str
    echo: str | None = None  # first echoed source line (coqtop) if any
    caret_col: int | None = None
    file_line: int | None = None  # coqc: line in the file
    char_start: int | None = None
    char_end: int | None = None


def parse_errors(out: str) -> list[RawError]:
    """Errors in coqtop/coqc output (tagged info and warning messages are ignored)."""
    plain = _TAGGED.sub("", out)
    errs: list[RawError] = []
    for seg in _PROMPT.split(plain) if "<prompt>" in plain else [plain]:
        if seg is None:
            continue
        for em in re.finditer(r"(?m)^Error:", seg):
            body = seg[em.start():]
            nxt = re.search(r"\n(?:Toplevel input|File \"[^\"]*\", line \d+)", body[1:])
            if nxt:
                body = body[: nxt.start() + 1]
            e = RawError(text=body.strip())
            before = seg[: em.start()]
            locs = list(_LOC.finditer(before))
            if locs and before[locs[-1].end():].strip().startswith(">") or (
                locs and not before[locs[-1].end():].strip()
            ):
                lm = locs[-1]
                e.file_line = int(lm.group(1)) if lm.group(1) else None
                e.char_start, e.char_end = int(lm.group(2)), int(lm.group(3))
                echo = [ln for ln in before[lm.end():].splitlines() if ln.startswith(">")]
                if echo:
                    e.echo = echo[0][2:] if echo[0].startswith("> ") else echo[0][1:]
                    if len(echo) > 1 and "^" in echo[1]:
                        e.caret_col = echo[1].index("^") - 2
            errs.append(e)
    return errs


def out_of_memory(out: str) -> bool:
    low = out.lower()
    return "out of memory" in low or "cannot allocate memory" in low


# --------------------------------------------------------------------------- processes


class SessionDied(RuntimeError):
    def __init__(self, msg: str, output: str = "", returncode: int | None = None) -> None:
        super().__init__(msg)
        self.output = output
        self.returncode = returncode


class SessionTimeout(RuntimeError):
    def __init__(self, output: str = "") -> None:
        super().__init__("timeout")
        self.output = output


class OutputLimit(RuntimeError):
    def __init__(self, output: str = "") -> None:
        super().__init__("output limit exceeded")
        self.output = output


@dataclass
class Reply:
    output: str  # everything printed before the sentinel's answer
    prompt_after: Prompt | None  # the prompt printed right before the sentinel ran


class CoqProcess:
    """One interactive ``coqtop -emacs`` under the sandbox."""

    def __init__(
        self,
        sandbox: Sandbox,
        scratch: Path,
        *,
        coqtop: str = "coqtop",
        args: tuple[str, ...] = (),
        output_cap: int = 1 << 20,
    ) -> None:
        self.scratch = Path(scratch)
        self.output_cap = output_cap
        self.proc = sandbox.popen(
            [coqtop, "-q", "-emacs", *args],
            self.scratch,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=0,
        )
        self._buf = b""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.proc.pid) if self.alive() else 0

    def close(self) -> None:
        kill_group(self.proc)

    def run(self, text: str, timeout: float) -> Reply:
        """Send ``text`` followed by a sentinel; return what was printed before the sentinel.

        Raises SessionTimeout, OutputLimit or SessionDied; the caller must then close()."""
        nonce = "vrf_" + secrets.token_hex(8)
        payload = text if text.endswith("\n") else text + "\n"
        payload += f"Locate {nonce}.\n"
        try:
            self.proc.stdin.write(payload.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise SessionDied(f"coqtop is gone: {e}", self._drain(), self.proc.poll()) from e
        marker = re.compile(
            rb"No object of basename " + nonce.encode() + rb"\s*<prompt>.*?</prompt>", re.DOTALL
        )
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        buf = bytearray(self._buf)
        self._buf = b""
        scan = 0
        while True:
            m = marker.search(buf, max(0, scan - 200))
            if m:
                before = bytes(buf[: m.start()])
                self._buf = bytes(buf[m.end():])
                out = before.decode(errors="replace")
                ps = prompts(out)
                return Reply(out, ps[-1] if ps else None)
            scan = len(buf)
            if len(buf) > self.output_cap:
                raise OutputLimit(buf[-4000:].decode(errors="replace"))
            left = deadline - time.monotonic()
            if left <= 0:
                raise SessionTimeout(buf[-4000:].decode(errors="replace"))
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not r:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                try:
                    rc = self.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    rc = None
                raise SessionDied("coqtop exited", buf[-8000:].decode(errors="replace"), rc)
            buf += chunk

    def _drain(self) -> str:
        try:
            r, _, _ = select.select([self.proc.stdout.fileno()], [], [], 0.2)
            if r:
                return os.read(self.proc.stdout.fileno(), 1 << 16).decode(errors="replace")
        except (OSError, ValueError):
            pass
        return ""


@dataclass
class Attempt:
    kind: str  # "ok" | "error" | "open" | "timeout" | "died" | "oom" | "flood"
    output: str = ""
    errors: list[RawError] = field(default_factory=list)
    returncode: int | None = None
    check_seconds: float = 0.0  # wall time of the request that ran the text (proof checking)


class WarmSession:
    """A coqtop that returns to a saved state after every attempt.

    ``key`` (usually empty) is run once at start. On top of it the session keeps a stack of
    ``Require`` sentences, each with the state after it: :meth:`enter` makes a sequence of
    sentences current by going back (``BackTo``) to the longest prefix already loaded and running
    only the rest, so a session moves between the libraries of different proofs and headers
    without a restart; attempts then return to the state after the last sentence. Running a
    sequence of sentences in one go or split across ``enter`` and ``attempt`` is the same Coq
    document, so the verdicts do not depend on what the session held before."""

    def __init__(
        self,
        key: str,
        sandbox: Sandbox,
        scratch: Path,
        *,
        coqtop: str = "coqtop",
        start_timeout: float = 120.0,
        output_cap: int = 1 << 20,
    ) -> None:
        self.key = key
        self.uses = 0
        self.start_timeout = start_timeout
        self.header_errors: list[RawError] = []
        self.proc = CoqProcess(sandbox, scratch, coqtop=coqtop, output_cap=output_cap)
        try:
            reply = self.proc.run(key + "\n", start_timeout)
        except Exception:
            self.proc.close()
            raise
        self.header_errors = parse_errors(reply.output)
        if reply.prompt_after is None:  # pragma: no cover - coqtop always prints a prompt
            self.proc.close()
            raise SessionDied("no prompt from coqtop", reply.output)
        # the state to return to is the one in which the sentinel was read
        self.base_state = self.state = reply.prompt_after.state
        self._base = reply.prompt_after
        self._stack: list[tuple[str, int, list[RawError]]] = []  # (sentence, state after, errors)
        self.switches = 0  # enter() calls that had to load something (statistics)

    def loaded(self) -> list[str]:
        return [s for s, _, _ in self._stack]

    def enter(self, sentences: list[str]) -> list[RawError]:
        """Make the state after ``sentences`` (run on top of ``key``) the one attempts return
        to; returns the errors of ``key`` and of these sentences. Raises SessionTimeout,
        OutputLimit or SessionDied (the caller must then discard the session)."""
        j = 0
        while j < min(len(sentences), len(self._stack)) and self._stack[j][0] == sentences[j]:
            j += 1
        if j < len(self._stack):
            target = self._stack[j - 1][1] if j else self.base_state
            back = self.proc.run(f"BackTo {target}.", 30.0)
            p = back.prompt_after
            if p is None or p.state != target or p.proofs.strip():
                self.proc.close()
                raise SessionDied("could not return to a loaded state", back.output)
            del self._stack[j:]
            self.state = target
        if j < len(sentences):
            self.switches += 1
        for sent in sentences[j:]:
            reply = self.proc.run(sent + "\n", self.start_timeout)
            p = reply.prompt_after
            if p is None or p.proofs.strip():
                self.proc.close()
                raise SessionDied("unexpected state after a Require", reply.output)
            self._stack.append((sent, p.state, parse_errors(reply.output)))
            self.state = p.state
        return self.header_errors + [e for _, _, errs in self._stack for e in errs]

    # WarmProcess protocol
    def alive(self) -> bool:
        return self.proc.alive()

    def rss_bytes(self) -> int:
        return self.proc.rss_bytes()

    def close(self) -> None:
        self.proc.close()

    def attempt(self, text: str, timeout: float, *, after: str = "") -> Attempt:
        """Run ``text`` (statement + proof), optionally ``after`` commands, then go back."""
        self.uses += 1
        t0 = time.monotonic()
        try:
            reply = self.proc.run(text, timeout)
            checked = time.monotonic() - t0
            extra = self.proc.run(after, 30.0) if after else None
            back = self.proc.run(f"BackTo {self.state}.", 30.0)
        except SessionTimeout as e:
            return Attempt("timeout", e.output, check_seconds=time.monotonic() - t0)
        except OutputLimit as e:
            return Attempt("flood", e.output, check_seconds=time.monotonic() - t0)
        except SessionDied as e:
            kind = "oom" if out_of_memory(e.output) or e.returncode in (-6, 134) else "died"
            return Attempt(kind, e.output, returncode=e.returncode, check_seconds=time.monotonic() - t0)
        # integrity: we must be back at the saved state with no open proof
        p = back.prompt_after
        if p is None or p.state != self.state or p.proofs.strip():
            self.proc.close()
        out = reply.output
        errs = parse_errors(out)
        if extra is not None:
            out += "\n" + extra.output
        if out_of_memory(_TAGGED.sub("", reply.output)):
            self.proc.close()
            return Attempt("oom", out, errs, check_seconds=checked)
        if errs:
            return Attempt("error", out, errs, check_seconds=checked)
        pa = reply.prompt_after
        if pa is None or pa.proofs.strip() or pa.name != self._base.name:
            return Attempt("open", out, check_seconds=checked)
        return Attempt("ok", out, check_seconds=checked)


def raw_to_message(
    e: RawError, *, text_lines: list[str], body_first: int, body_line_offset: int, file_mode: bool
) -> Message:
    """Map a raw error to a Message with a proof-relative line when the error is in the proof.

    ``text_lines``: lines of the text Coq saw; ``body_first``: index (0-based) in them of the first
    line of the proof body; ``body_line_offset``: line (0-based) of the body inside the proof."""
    idx: int | None = None
    col = e.caret_col
    if file_mode and e.file_line is not None:
        idx = e.file_line - 1
        if col is None and e.char_start is not None:
            col = e.char_start
    elif e.echo is not None and e.echo.strip():
        # coqtop echoes the line from where its input buffer starts: a suffix of a source line
        cands = [i for i, ln in enumerate(text_lines) if ln.endswith(e.echo)]
        if cands:
            after = [i for i in cands if i >= body_first]
            idx = after[0] if after else cands[0]
            if col is not None:
                col += len(text_lines[idx]) - len(e.echo)
    text = e.text[len("Error:"):].strip() if e.text.startswith("Error:") else e.text
    if idx is None:
        return Message("error", text, None, col, in_proof=False)
    if idx >= body_first:
        return Message("error", text, idx - body_first + body_line_offset + 1, col, in_proof=True)
    return Message("error", text, idx + 1, col, in_proof=False)
