"""The conjecture prompt, its parsing, and statement normalization.

One format serves both generation and training (STP used two slightly different ones; we
do not): the prompt is

    <lemma>
    {lemma}
    <easy theorem>
    {seed statement and proof}
    <hard theorem>

and the model (the conjecturer role) continues with a theorem statement followed by
``</hard theorem>``. A training example for the conjecturer is exactly this prompt and the
completion ``{statement}\\n</hard theorem>``.

Parsing keeps only the statement: Lean is cut at the first top-level ``:=`` and gets
``:= by`` appended (the form of miniF2F's statements); Coq keeps the first
``Theorem/Lemma/... name : type.`` sentence (anything from ``Proof.`` on is dropped). In both
the theorem is renamed to a fresh name derived from the statement's alpha-normalized content,
so the same conjecture always gets the same name (and the same database identity).

Normalization (used by dedup and decontamination): :func:`ws_key` collapses whitespace,
:func:`alpha_key` additionally drops comments, canonicalizes the theorem name and the names
of bound variables (binders of the signature, ``∀/∃/fun/forall/exists`` binders), and removes
whitespace that does not separate two identifier characters or two operator characters. So a
statement that was only renamed and re-spaced has the same ``alpha_key``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from prover.extract import coq_sentences

LEMMA_TAG = "<lemma>"
EASY_TAG = "<easy theorem>"
HARD_TAG = "<hard theorem>"
HARD_END = "</hard theorem>"

# The "no lemma" placeholder shown in the prompt (stored as lemma "" in the database).
EMPTY_LEMMA = {"lean": "theorem true : True", "coq": "Lemma true : True."}

FORBIDDEN = {
    "lean": re.compile(r"(?<![\w.])(?:sorry|admit|native_decide|axiom|import)(?![\w'])"),
    "coq": re.compile(r"(?<![\w.])(?:Admitted|admit|Axiom|Parameter|Require|Abort)(?![\w'])"),
}

_LEAN_KW = re.compile(r"(?<![\w.'])(theorem|lemma)\s+")
_COQ_KW = re.compile(r"^(?:Theorem|Lemma|Fact|Remark|Corollary|Proposition|Example)\b")
_COQ_NAMED = re.compile(
    r"^(Theorem|Lemma|Fact|Remark|Corollary|Proposition|Example)\s+([A-Za-z_][\w']*)"
)


def render_lemma(itp: str, lemma: str) -> str:
    return lemma.strip() if lemma and lemma.strip() else EMPTY_LEMMA[itp]


def seed_text(itp: str, statement: str, proof: str) -> str:
    """A seed theorem with its proof, as the conjecturer sees it."""
    if itp == "lean":
        st = statement if statement.endswith("\n") else statement.rstrip() + "\n"
        return (st + proof).rstrip()
    return statement.rstrip() + "\n" + proof.strip()


def conjecture_prompt(itp: str, lemma: str, seed_statement: str, seed_proof: str) -> str:
    """The conjecturer's prompt (generation and training alike)."""
    return (
        f"{LEMMA_TAG}\n{render_lemma(itp, lemma)}\n{EASY_TAG}\n"
        f"{seed_text(itp, seed_statement, seed_proof)}\n{HARD_TAG}\n"
    )


def conjecture_completion(statement: str) -> str:
    """The training target for a conjecture (what the model should write after the prompt)."""
    return statement.rstrip() + "\n" + HARD_END


# ----------------------------------------------------------------------------- masking


def strip_comments(itp: str, text: str) -> str:
    """``text`` with comments replaced by spaces (Lean ``--``, ``/- -/``; Coq ``(* *)``)."""
    if itp == "lean":
        opens, closes, line = "/-", "-/", "--"
    else:
        opens, closes, line = "(*", "*)", None
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if line and text.startswith(line, i):
            j = text.find("\n", i)
            i = n if j == -1 else j
            out.append(" ")
        elif text.startswith(opens, i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith(opens, j):
                    depth, j = depth + 1, j + 2
                elif text.startswith(closes, j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(" ")
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _find_top_assign(text: str) -> int:
    depth = 0
    for i, c in enumerate(text[:-1]):
        if c in "([{⟨⦃":
            depth += 1
        elif c in ")]}⟩⦄":
            depth = max(depth - 1, 0)
        elif c == ":" and text[i + 1] == "=" and depth == 0:
            return i
    return -1


# ----------------------------------------------------------------------------- normalization

_WS = re.compile(r"\s+")
_IDENT = re.compile(r"[^\W\d][\w']*")


def ws_key(text: str) -> str:
    return _WS.sub(" ", text).strip()


def theorem_name(itp: str, statement: str) -> str | None:
    text = strip_comments(itp, statement).strip()
    if itp == "lean":
        m = re.search(r"(?<![\w.'])(?:theorem|lemma)\s+([^\s:(\[{⦃]+)", text)
    else:
        m = _COQ_NAMED.match(text)
        return m.group(2) if m else None
    return m.group(1) if m else None


_LEAN_BINDER_GROUP = re.compile(r"[(\{⦃\[]\s*((?:[^\W\d][\w']*\s+)*[^\W\d][\w']*)\s*:(?!=)")
_LEAN_QUANT = re.compile(r"(?:∀|∃!?|Σ|∑|∏|⋃|⋂|\bfun|λ)\s*((?:[^\W\d][\w']*\s*)+)")
_COQ_QUANT = re.compile(r"\b(?:forall|exists!?|fun)\s+((?:[A-Za-z_][\w']*\s+)*[A-Za-z_][\w']*)")
_KEYWORDS = {
    "forall", "exists", "fun", "in", "let", "if", "then", "else", "match", "with", "end",
    "theorem", "lemma", "Theorem", "Lemma", "by", "at", "Type", "Prop", "Set", "as", "from",
}


def bound_names(itp: str, statement: str) -> list[str]:
    """Names bound by the statement (signature binders and quantifiers), in order of first
    appearance. Dotted names are never treated as bound."""
    text = strip_comments(itp, statement)
    found: list[tuple[int, str]] = []
    for m in _LEAN_BINDER_GROUP.finditer(text):
        for sub in _IDENT.finditer(m.group(1)):
            found.append((m.start(1) + sub.start(), sub.group()))
    quant = _LEAN_QUANT if itp == "lean" else _COQ_QUANT
    for m in quant.finditer(text):
        for sub in _IDENT.finditer(m.group(1)):
            end = m.start(1) + sub.end()
            if sub.group() in _KEYWORDS or text[end : end + 1] == ".":
                break  # `∑ i in Finset.range n`: only `i` is bound
            found.append((m.start(1) + sub.start(), sub.group()))
    out: list[str] = []
    for _, name in sorted(found):
        if name not in _KEYWORDS and name not in out and name != "_":
            out.append(name)
    return out


def _is_word(c: str) -> bool:
    return c.isalnum() or c in "_'"


_BRACKETS = set("()[]{}⟨⟩⦃⦄,;")


def _squeeze(text: str) -> str:
    """Drop whitespace except between two identifier characters or two operator characters."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            j = i
            while j < n and text[j].isspace():
                j += 1
            prev = out[-1] if out else ""
            nxt = text[j] if j < n else ""
            if prev and nxt:
                both_word = _is_word(prev) and _is_word(nxt)
                both_op = (not _is_word(prev) and prev not in _BRACKETS
                           and not _is_word(nxt) and nxt not in _BRACKETS)
                if both_word or both_op:
                    out.append(" ")
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def alpha_key(itp: str, statement: str) -> str:
    """A key equal for statements that differ only in theorem name, bound-variable names,
    whitespace and comments (Lean: also a trailing ``:= by``; Coq: the declaration keyword)."""
    text = strip_comments(itp, statement).strip()
    if itp == "lean":
        a = _find_top_assign(text)
        if a != -1:
            text = text[:a]
        text = re.sub(r"^(?:theorem|lemma)\s+[^\s:(\[{⦃]+", "theorem _", text.strip())
    else:
        text = re.sub(r"\.\s*$", "", text)
        text = _COQ_NAMED.sub("Theorem _", text)
    mapping = {name: f"_v{i}" for i, name in enumerate(bound_names(itp, text))}
    if mapping:
        text = re.sub(
            r"(?<![\w'.])[^\W\d][\w']*(?![\w'])",
            lambda m: mapping.get(m.group(), m.group()),
            text,
        )
    return _squeeze(text)


def statement_digest(itp: str, statement: str) -> str:
    return hashlib.sha256(alpha_key(itp, statement).encode()).hexdigest()


def fresh_name(itp: str, statement: str, prefix: str = "conj") -> str:
    """A deterministic theorem name from the statement's content."""
    return f"{prefix}_{statement_digest(itp, statement)[:12]}"


def rename_theorem(itp: str, statement: str, name: str) -> str:
    """The statement with its theorem renamed to ``name`` (the declaration keyword is kept)."""
    if itp == "lean":
        return re.sub(r"^(\s*(?:theorem|lemma)\s+)[^\s:(\[{⦃]+", lambda m: m.group(1) + name,
                      statement, count=1)
    return re.sub(
        r"^(\s*(?:Theorem|Lemma|Fact|Remark|Corollary|Proposition|Example)\s+)[A-Za-z_][\w']*",
        lambda m: m.group(1) + name, statement, count=1,
    )


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedConjecture:
    statement: str  # normalized, renamed; Lean ends with ":= by\n", Coq with "."
    name: str


def parse_conjecture(
    itp: str, completion: str, *, prefix: str = "conj"
) -> tuple[ParsedConjecture | None, str]:
    """Parse a conjecturer completion. Returns (parsed or None, reason); reason is "ok" or
    why nothing usable was found ("no_statement", "truncated", "forbidden", "empty")."""
    closed = HARD_END in completion
    text = completion.split(HARD_END, 1)[0]
    if not text.strip():
        return None, "empty"
    if itp == "lean":
        body = _parse_lean(text, closed)
    elif itp == "coq":
        body = _parse_coq(text, closed)
    else:
        raise ValueError(f"unknown ITP {itp!r}")
    if isinstance(body, str) and body in ("no_statement", "truncated"):
        return None, body
    assert isinstance(body, tuple)
    statement = body[0]
    if FORBIDDEN[itp].search(strip_comments(itp, statement)):
        return None, "forbidden"
    name = fresh_name(itp, statement, prefix)
    return ParsedConjecture(rename_theorem(itp, statement, name), name), "ok"


def _parse_lean(text: str, closed: bool) -> tuple[str] | str:
    clean = strip_comments("lean", text)
    m = _LEAN_KW.search(clean)
    if m is None:
        return "no_statement"
    rest = clean[m.start():]
    a = _find_top_assign(rest)
    if a == -1:
        if not closed:
            return "truncated"
        sig = rest.strip()
        sig = sig.removesuffix(" by")
    else:
        sig = rest[:a]
    sig = sig.strip()
    if not re.match(r"^(?:theorem|lemma)\s+[^\s:(\[{⦃]+", sig):
        sig = re.sub(r"^(theorem|lemma)\s*", r"\1 _anon ", sig)
    sig = re.sub(r"^lemma\b", "theorem", sig)
    if ":" not in sig:
        return "no_statement"
    # keep the model's line breaks but not trailing spaces
    sig = "\n".join(line.rstrip() for line in sig.split("\n"))
    return (sig + " := by\n",)


def _parse_coq(text: str, closed: bool) -> tuple[str] | str:
    clean = strip_comments("coq", text)
    for s in coq_sentences(clean):
        sentence = clean[s.start : s.end].strip().lstrip("-+*{} \t\n")
        if not _COQ_KW.match(sentence):
            continue
        if re.search(r"(?<![\w.])Proof(?![\w'])", sentence):
            sentence = re.split(r"(?<![\w.])Proof(?![\w'])", sentence)[0].rstrip() + "."
        if not sentence.endswith("."):
            if not closed:
                return "truncated"
            sentence = sentence + "."
        if not _COQ_NAMED.match(sentence):
            kw = sentence.split(None, 1)
            sentence = f"{kw[0]} _anon {kw[1] if len(kw) > 1 else ''}"
        sentence = re.sub(r"^(?:Lemma|Fact|Remark|Corollary|Proposition|Example)\b", "Theorem",
                          sentence)
        if ":" not in sentence:
            return "no_statement"
        sentence = "\n".join(line.rstrip() for line in sentence.split("\n"))
        return (sentence,)
    return "no_statement"
