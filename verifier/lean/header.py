"""Lean source text: headers, statements and the assembly of the checked text.

Pure functions only.

* :func:`split_header` separates a trusted header into its imports (which can only be
  processed by the REPL as the first command of a fresh environment) and the rest (options,
  ``open``s, ``universe``s, ...). :func:`pool_key` collapses the imports to the key of the warm
  process pool: imports are deduplicated and sorted, so ``import Mathlib\\nimport Aesop`` and
  ``import Aesop\\nimport Mathlib`` share processes. The rest is *not* part of the key: each
  process elaborates every distinct rest once, as its own command on the import environment,
  and proofs run on top of that environment (see backend.py).
* :func:`parse_statement` reads a trusted ``theorem``/``lemma``/``example`` statement.
* :func:`assemble` builds the command text that is checked: untrusted helper declarations,
  then the trusted statement, then the untrusted proof. The checked theorem is always the
  trusted statement text (an ``example`` gets a fresh theorem name so it can be checked).
  A proof may be the whole program a model wrote (imports, helper lemmas, the theorem
  restated, its proof): the restatement up to its ``:=`` is discarded and replaced by the
  trusted statement; what precedes it is kept as helpers, what follows as the proof.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CODE, COMMENT, STRING = 0, 1, 2

_ID_PART = r"(?:«[^»\n]*»|[^\s()\[\]{}:,«»⟨⟩@.;:=]+)"
_NAME_RE = re.compile(_ID_PART + r"(?:\." + _ID_PART + r")*")
_DECL_KW_RE = re.compile(r"(?<![\w.'!?])(theorem|lemma|example)(?![\w'!?])")
_MODIFIERS = ("private", "protected", "noncomputable", "nonrec")
_CLOSE = {"(": ")", "[": "]", "{": "}", "⟨": "⟩", "⦃": "⦄"}
_CHAR_LIT_RE = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)|[^\\'\n])'")


class StatementError(ValueError):
    """The statement is not a single theorem/lemma/example signature we can check."""


# --------------------------------------------------------------------------- lexing


@dataclass(frozen=True)
class Scan:
    mask: bytes  # per character: CODE, COMMENT or STRING
    unterminated_comment: bool
    unterminated_string: bool

    def code_only(self, text: str) -> str:
        """text with comments and literals blanked (line breaks kept, same length)."""
        return "".join(
            c if (m == CODE or c == "\n") else " " for c, m in zip(text, self.mask)
        )


def scan(text: str) -> Scan:
    """Mark comments and string/char literals the way Lean's tokenizer delimits them.

    Block comments nest (``/- /- -/ -/``) and ignore string quotes inside; ``--`` runs to
    the end of the line; ``«...»`` identifiers may contain comment markers.
    """
    n = len(text)
    mask = bytearray(n)
    i = 0
    bad_comment = bad_string = False
    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            mask[i:j] = bytes([COMMENT]) * (j - i)
            i = j
        elif c == "/" and text.startswith("/-", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/-", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("-/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if depth:
                bad_comment = True
                j = n
            mask[i:j] = bytes([COMMENT]) * (j - i)
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                bad_string = True
                j = n
            else:
                j += 1
            mask[i:j] = bytes([STRING]) * (j - i)
            i = j
        elif c == "«":
            j = text.find("»", i)
            i = n if j < 0 else j + 1
        elif c == "'" and (i == 0 or not _is_ident_char(text[i - 1])):
            m = _CHAR_LIT_RE.match(text, i)
            if m:
                mask[i : m.end()] = bytes([STRING]) * (m.end() - i)
                i = m.end()
            else:
                i += 1
        else:
            i += 1
    return Scan(bytes(mask), bad_comment, bad_string)


def _is_ident_char(c: str) -> bool:
    return c.isalnum() or c in "_'!?.₀₁₂₃₄₅₆₇₈₉»"


def code_only(text: str) -> str:
    return scan(text).code_only(text)


def _skip_ws(code: str, i: int) -> int:
    while i < len(code) and code[i].isspace():
        i += 1
    return i


def find_top_level_assign(code: str, start: int) -> int | None:
    """Index of the first ``:=`` at bracket depth 0 in ``code`` (comments blanked)."""
    stack: list[str] = []
    i = start
    n = len(code)
    while i < n:
        c = code[i]
        if c in _CLOSE:
            stack.append(_CLOSE[c])
        elif stack and c == stack[-1]:
            stack.pop()
        elif c in ")]}⟩⦄":
            return None  # unbalanced: not a signature we understand
        elif c == ":" and not stack and code.startswith(":=", i):
            return i
        i += 1
    return None


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class HeaderParts:
    imports: tuple[str, ...]  # normalized import commands, e.g. "import Mathlib"
    rest: str  # everything after the imports, trimmed (may be "")
    preamble: tuple[str, ...] = ()  # "prelude" / "module" markers, kept in order


_IMPORT_MODS = ("public", "meta", "private")


def split_header(header: str) -> HeaderParts:
    """Imports (and ``prelude``/``module``) versus the rest of a header."""
    code = code_only(header)
    i = 0
    imports: list[str] = []
    preamble: list[str] = []
    end_of_imports = 0
    word_re = re.compile(r"[^\s]+")
    while True:
        j = _skip_ws(code, i)
        m = word_re.match(code, j)
        if not m:
            end_of_imports = len(header)
            break
        w = m.group()
        if w in ("prelude", "module") and not imports:
            preamble.append(w)
            i = end_of_imports = m.end()
            continue
        mods: list[str] = []
        k = j
        while w in _IMPORT_MODS:
            mods.append(w)
            k = _skip_ws(code, m.end())
            m = word_re.match(code, k)
            if not m:
                break
            w = m.group()
        if not m or w != "import":
            end_of_imports = j
            break
        k = _skip_ws(code, m.end())
        m2 = word_re.match(code, k)
        extra = []
        if m2 and m2.group() == "all":
            extra.append("all")
            k = _skip_ws(code, m2.end())
            m2 = word_re.match(code, k)
        if not m2 or not _NAME_RE.fullmatch(m2.group()):
            raise StatementError(f"malformed import in header near {header[j:j + 40]!r}")
        imports.append(" ".join(mods + ["import"] + extra + [m2.group()]))
        i = end_of_imports = m2.end()
    rest = header[end_of_imports:]
    rest = "\n".join(line.rstrip() for line in rest.strip("\n").split("\n")).strip()
    uniq = sorted(set(imports))
    return HeaderParts(tuple(uniq), rest, tuple(preamble))


def pool_key(header: str | HeaderParts) -> str:
    """Key of the warm process pool: the normalized import block (also the env-0 command)."""
    parts = split_header(header) if isinstance(header, str) else header
    return "\n".join(parts.preamble + parts.imports)


def header_namespace(rest: str) -> str:
    """The namespace in effect at the end of a header's rest (``namespace``/``end``)."""
    stack: list[list[str]] = []
    for m in re.finditer(r"(?m)^\s*(namespace|section|end)\b[ \t]*([^\s]*)", code_only(rest)):
        kw, arg = m.group(1), m.group(2)
        if kw == "namespace":
            stack.append(arg.split(".") if arg else [])
        elif kw == "section":
            stack.append([])
        elif stack:
            stack.pop()
    return ".".join(p for part in stack for p in part)


# --------------------------------------------------------------------------- statement


@dataclass(frozen=True)
class Statement:
    text: str
    keyword: str  # "theorem" | "lemma" | "example"
    name: str | None  # as written; None for example
    decl_start: int  # index of the keyword
    after_name: int  # index just after the name (after the keyword for example)
    assign: int | None  # index of the top-level ":=" (None: signature only)
    tail: str  # what followed ":=" in code: "", "by", "by sorry" or "sorry"

    @property
    def signature_rest(self) -> str:
        """Binders and type: the text between the name and ``:=``."""
        end = self.assign if self.assign is not None else len(self.text)
        return self.text[self.after_name : end].rstrip()

    def reference_command(self, ref_name: str) -> str:
        """The statement alone, as a fresh theorem with a placeholder proof (trusted)."""
        return f"theorem {ref_name}{self.signature_rest} := sorry"

    def statement_check_command(self, goal_name: str) -> str:
        """The statement with a ``sorry`` proof, as written (example renamed)."""
        return self.trusted_prefix(goal_name) + " by sorry"

    def trusted_prefix(self, goal_name: str) -> str:
        """The statement up to and including ``:=`` (example renamed to goal_name)."""
        if self.keyword == "example":
            head = self.text[: self.decl_start] + f"theorem {goal_name}"
        else:
            head = self.text[: self.after_name]
        end = self.assign if self.assign is not None else len(self.text)
        body = self.text[self.after_name : end]
        if self.assign is None:
            return head + body.rstrip() + " :="
        return head + body + ":="


def parse_statement(statement: str) -> Statement:
    sc = scan(statement)
    if sc.unterminated_comment or sc.unterminated_string:
        raise StatementError("unterminated comment or string in statement")
    code = sc.code_only(statement)
    m = _DECL_KW_RE.search(code)
    if not m:
        raise StatementError("statement is not a theorem, lemma or example")
    prefix = _strip_attributes(code[: m.start()])
    words = prefix.split()
    if any(w not in _MODIFIERS for w in words):
        raise StatementError(f"unexpected text before the declaration: {prefix.strip()[:60]!r}")
    kw = m.group(1)
    i = m.end()
    name = None
    after = i
    if kw != "example":
        j = _skip_ws(code, i)
        nm = _NAME_RE.match(code, j)
        if not nm or j == i:
            raise StatementError("theorem without a name")
        name = nm.group()
        after = nm.end()
    assign = find_top_level_assign(code, after)
    tail = ""
    if assign is not None:
        tail = " ".join(code[assign + 2 :].split())
        if tail not in ("", "by", "by sorry", "sorry"):
            raise StatementError("statement already contains a proof after ':='")
        if code[assign + 2 :].count(":=") or _DECL_KW_RE.search(code, assign + 2):
            raise StatementError("more than one declaration in statement")
    elif _DECL_KW_RE.search(code, after):
        raise StatementError("more than one declaration in statement")
    return Statement(statement, kw, name, m.start(), after, assign, tail)


def _strip_attributes(code: str) -> str:
    """Remove ``@[...]`` blocks (bracket balanced) from a code prefix."""
    out = []
    i = 0
    while i < len(code):
        if code.startswith("@[", i):
            depth, j = 0, i + 1
            while j < len(code):
                if code[j] == "[":
                    depth += 1
                elif code[j] == "]":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            i = j + 1
            out.append(" ")
        else:
            out.append(code[i])
            i += 1
    return "".join(out)


def qualified_name(stmt: Statement, namespace: str, goal_name: str) -> str:
    """Full name of the checked theorem, written so no ``open`` can redirect it."""
    name = stmt.name if stmt.name is not None else goal_name
    if name.startswith("_root_."):
        return name
    full = f"{namespace}.{name}" if namespace else name
    return "_root_." + full


# --------------------------------------------------------------------------- assembly


@dataclass(frozen=True)
class Piece:
    start: int  # offset in the body
    end: int
    origin: str  # "trusted" | "proof" | "helpers"
    offset: int = 0  # offset of the piece's text in its origin (proof or helpers)


@dataclass(frozen=True)
class Assembly:
    body: str  # the command sent on the header environment
    pieces: tuple[Piece, ...]
    proof: str
    extracted: bool  # the proof restated the theorem (full program)
    dropped_imports: tuple[str, ...] = ()
    _body_lines: tuple[int, ...] = field(default=(), repr=False)
    _proof_lines: tuple[int, ...] = field(default=(), repr=False)

    @property
    def untrusted(self) -> str:
        """Helpers and proof as they appear in the body (what the prefilter reads)."""
        return "\n".join(self.body[p.start : p.end] for p in self.pieces if p.origin != "trusted")

    def map_position(
        self, line: int | None, column: int | None, *, end: bool = False
    ) -> tuple[int | None, int | None, bool]:
        """Body position → (line, column, in_proof); proof-relative when in the proof."""
        if line is None or column is None or line < 1 or line > len(self._body_lines):
            return line, column, False
        idx = self._body_lines[line - 1] + column
        for p in self.pieces:
            inside = p.start <= idx <= p.end if end else p.start <= idx < p.end
            if inside and p.origin == "proof":
                return (*_to_line_col(self._proof_lines, p.offset + idx - p.start), True)
        return line, column, False


def _line_starts(text: str) -> tuple[int, ...]:
    starts = [0]
    for i, c in enumerate(text):
        if c == "\n":
            starts.append(i + 1)
    return tuple(starts)


def _to_line_col(starts: tuple[int, ...], idx: int) -> tuple[int, int]:
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if starts[mid] <= idx:
            lo = mid
        else:
            hi = mid - 1
    return lo + 1, idx - starts[lo]


_IMPORT_LINE_RE = re.compile(r"(?m)^[ \t]*import[ \t]+(\S+)[ \t]*(?:\n|$)")
_TRAILING_MODS_RE = re.compile(r"(?:\b(?:private|protected|noncomputable|nonrec)\s+)+$")


def find_restatement(stmt: Statement, proof: str) -> tuple[int, int] | None:
    """(start of the restated declaration, end of its ``:=``) in a full-program proof."""
    code = code_only(proof)
    if stmt.name is None:
        pat = re.compile(r"(?<![\w.'!?])example(?![\w'!?])")
    else:
        pat = re.compile(
            r"(?<![\w.'!?])(?:theorem|lemma)\s+" + re.escape(stmt.name) + r"(?![\w.'!?»])"
        )
    m = pat.search(code)
    if not m:
        return None
    a = find_top_level_assign(code, m.end())
    if a is None:
        return None
    start = m.start()
    mods = _TRAILING_MODS_RE.search(code[:start])
    if mods:
        start = mods.start()
    return start, a + 2


def _drop_known_imports(
    text: str, origin: str, have: set[str], parts: list, dropped: list[str]
) -> None:
    """Append text to parts minus ``import`` lines the trusted header already has (models
    often repeat the header); any other import stays and the prefilter rejects it."""
    pos = 0
    for m in _IMPORT_LINE_RE.finditer(code_only(text)):
        if m.group(1) in have:
            if m.start() > pos:
                parts.append((text[pos : m.start()], origin, pos))
            dropped.append(m.group(1))
            pos = m.end()
    if len(text) > pos:
        parts.append((text[pos:], origin, pos))


def assemble(
    stmt: Statement,
    proof: str,
    goal_name: str,
    header_imports: tuple[str, ...] = (),
    helpers: str = "",
) -> Assembly:
    """Helpers (untrusted) + trusted statement + proof (untrusted), with a position map."""
    parts: list[tuple[str, str, int]] = []  # (text, origin, offset in origin)
    dropped: list[str] = []
    have = {i.split()[-1] for i in header_imports}
    if helpers.strip():
        _drop_known_imports(helpers, "helpers", have, parts, dropped)
        if not helpers.endswith("\n"):
            parts.append(("\n", "trusted", 0))
    restated = find_restatement(stmt, proof)
    if restated is not None:
        r_start, r_assign_end = restated
        _drop_known_imports(proof[:r_start], "proof", have, parts, dropped)
        if parts and not parts[-1][0].endswith("\n"):
            parts.append(("\n", "trusted", 0))
        parts.append((stmt.trusted_prefix(goal_name), "trusted", 0))
        parts.append((proof[r_assign_end:], "proof", r_assign_end))
    else:
        prefix = stmt.trusted_prefix(goal_name)
        if stmt.assign is None and code_only(proof).lstrip().startswith(":="):
            # the proof supplies ":=" itself; nothing of it can reach into the signature
            prefix = prefix[: -len(":=")].rstrip() + " "
        elif stmt.assign is None:
            prefix += " by\n"
        else:
            # keep the statement's own layout after ":=" (e.g. "by" + line break), minus a
            # placeholder sorry
            after = stmt.text[stmt.assign + 2 :]
            prefix += after.replace("sorry", "", 1) if "sorry" in stmt.tail else after
        parts.append((prefix, "trusted", 0))
        parts.append((proof, "proof", 0))
    body_chunks = []
    pieces = []
    pos = 0
    for text, origin, off in parts:
        body_chunks.append(text)
        pieces.append(Piece(pos, pos + len(text), origin, off))
        pos += len(text)
    body = "".join(body_chunks)
    return Assembly(
        body=body,
        pieces=tuple(pieces),
        proof=proof,
        extracted=restated is not None,
        dropped_imports=tuple(dropped),
        _body_lines=_line_starts(body),
        _proof_lines=_line_starts(proof),
    )
