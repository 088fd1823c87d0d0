"""Turn model output into an untrusted proof for a trusted statement.

The model's restatement of the theorem is never trusted: we locate the theorem in the model's
code by name, keep only what follows the statement (the proof) and what precedes it (helper
lemmas and definitions), and the verifier re-attaches the trusted header and statement.

Proof conventions (what ``ExtractedProof.proof`` holds):

- Lean: the tactic block that follows the trusted ``... := by\\n`` (a term-mode answer
  ``:= t`` becomes ``exact t``). Indented, no trailing newline.
- Coq: the model's ``Require`` sentences (each on its own line, first; the verifier moves them
  before the trusted header), then ``Proof. ... Qed.`` (or ``Defined.``; ``Admitted.``/``Abort.``
  are kept so that the verifier rejects them explicitly).

``helpers`` holds what the model wrote before the theorem (lemmas, defs, ``Open Scope``...),
minus Lean ``import`` / ``set_option maxHeartbeats`` / ``open`` lines and minus Coq ``Require``
sentences (those go to the proof). Goedel-Prover's harness drops helpers when it swaps the
statement back in; we keep them so that the verifier can place them before the statement.

``None`` means "no usable proof" (callers record the reason ``no_proof_found``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from verifier.coq_session import mask as coq_mask
from verifier.lean.header import code_only as lean_code_only

LEAN_LANGS = ("lean4", "lean")
COQ_LANGS = ("coq", "rocq", "v")


@dataclass(frozen=True)
class ExtractedProof:
    proof: str
    helpers: str = ""
    # True when the model restated the theorem with a different signature (or another name):
    # the proof is still returned, the verifier checks it against the trusted statement.
    statement_changed: bool = False


@dataclass(frozen=True)
class CodeBlock:
    lang: str  # info string after the opening fence, lower-cased ("" if none)
    code: str
    closed: bool


# ----------------------------------------------------------------------------- fenced blocks


def code_blocks(text: str) -> list[CodeBlock]:
    """Markdown fenced blocks in order. A block whose closing fence is missing (truncated
    output) is returned with ``closed=False``."""
    blocks: list[CodeBlock] = []
    pos = 0
    while True:
        start = text.find("```", pos)
        if start == -1:
            break
        nl = text.find("\n", start + 3)
        if nl == -1:  # a fence with nothing after it
            blocks.append(CodeBlock(text[start + 3 :].strip().lower(), "", False))
            break
        lang = text[start + 3 : nl].strip().lower()
        end = text.find("```", nl + 1)
        if end == -1:
            blocks.append(CodeBlock(lang, text[nl + 1 :], False))
            break
        code = text[nl + 1 : end]
        code = code.removesuffix("\n")
        blocks.append(CodeBlock(lang, code, True))
        pos = end + 3
    return blocks


def last_code_block(text: str, langs: Sequence[str], *, closed_only: bool = True) -> str | None:
    """The last fenced block whose language is one of ``langs``."""
    for b in reversed(code_blocks(text)):
        if b.lang in langs and (b.closed or not closed_only):
            return b.code
    return None


def cut_at_fence(text: str) -> str:
    """A completion continues code inside an open fence: keep what precedes the closing one."""
    i = text.find("```")
    return text if i == -1 else text[:i]


# ----------------------------------------------------------------------------- Lean

_LEAN_OPEN = "([{⟨⦃⁅"
_LEAN_CLOSE = ")]}⟩⦄⁆"
_LEAN_DECL_KW = r"(?:theorem|lemma)"
_LEAN_MODIFIERS = r"(?:@\[[^\]\n]*\][ \t]*\n?[ \t]*)?(?:(?:private|protected|noncomputable)[ \t]+)*"
# Column-0 lines that start a new command end the theorem's tactic block.
_LEAN_COMMAND = re.compile(
    r"^(?:theorem|lemma|def|example|abbrev|instance|structure|inductive|class|noncomputable|"
    r"private|protected|namespace|section|end|open|set_option|import|attribute|variable|"
    r"universe|macro|syntax|elab|notation|infix|infixl|infixr|prefix|postfix|axiom|opaque|"
    r"mutual|deriving|@\[|#[a-z_]+|/--|/-!)(?=\s|$|\[)",
    re.MULTILINE,
)
_LEAN_DROP_LINE = re.compile(r"^\s*(?:import\s|set_option\s+maxHeartbeats\b|open\s)")


def _lean_mask(text: str) -> str:
    """``text`` with comments and string literals blanked (newlines kept), so that searches
    on the mask give positions valid in ``text`` (the verifier's Lean lexer)."""
    return lean_code_only(text)


def _lean_find_assign(mask: str, start: int) -> int:
    """Index of the first ``:=`` at bracket depth 0 at or after ``start``, or -1."""
    depth = 0
    i = start
    while i < len(mask) - 1:
        c = mask[i]
        if c in _LEAN_OPEN:
            depth += 1
        elif c in _LEAN_CLOSE:
            depth = max(depth - 1, 0)
        elif c == ":" and mask[i + 1] == "=" and depth == 0:
            return i
        i += 1
    return -1


def lean_theorem_name(statement: str) -> str | None:
    m = re.search(
        rf"(?m)^\s*{_LEAN_MODIFIERS}{_LEAN_DECL_KW}\s+([^\s:(\[{{⦃]+)", _lean_mask(statement)
    )
    return m.group(1) if m else None


def _norm(s: str) -> str:
    return " ".join(s.split())


def _lean_signature(code: str, mask: str, decl_kw_pos: int) -> tuple[str, int]:
    """(normalized signature from the keyword to ``:=``, index of ``:=`` or -1)."""
    a = _lean_find_assign(mask, decl_kw_pos)
    end = a if a != -1 else len(code)
    return _norm(mask[decl_kw_pos:end]), a


def _lean_tactic_block(body: str) -> str | None:
    """Normalize the text after ``by``: cut at the next column-0 command, put a same-line
    first tactic on its own indented line, drop blank edges. None if nothing is left."""
    mask = _lean_mask(body)
    m = _LEAN_COMMAND.search(mask, 1 if body[:1] not in ("\n", "") else 0)
    if m:
        body, mask = body[: m.start()], mask[: m.start()]
    if not mask.strip():
        return None
    first_nl = body.find("\n")
    first = body if first_nl == -1 else body[:first_nl]
    if first.strip():  # `:= by norm_num` or continuation text on the `by` line
        rest = "" if first_nl == -1 else body[first_nl:]
        body = "  " + first.strip() + rest
    else:
        body = body[first_nl + 1 :]
    lines = body.rstrip().split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(line.rstrip() for line in lines) or None


def _lean_helpers(text: str) -> str:
    mask = _lean_mask(text)
    kept = [
        line
        for line, mline in zip(text.split("\n"), mask.split("\n"))
        if not _LEAN_DROP_LINE.match(mline)
    ]
    out = "\n".join(kept)
    # the theorem's own doc comment, right before it, is not a helper
    out = re.sub(r"/--(?:(?!-/).)*-/\s*$", "", out, flags=re.DOTALL)
    return out.strip()


def extract_lean_continuation(completion: str) -> ExtractedProof | None:
    """A completion that continues ``... := by\\n`` inside an open ``lean4`` fence."""
    proof = _lean_tactic_block(cut_at_fence(completion))
    return ExtractedProof(proof) if proof else None


def extract_lean_code(statement: str, code: str) -> ExtractedProof | None:
    """Proof and helpers from a full Lean file written by the model."""
    mask = _lean_mask(code)
    name = lean_theorem_name(statement)
    decl_re = rf"(?m)^[ \t]*{_LEAN_MODIFIERS}({_LEAN_DECL_KW})\s+"
    m = None
    if name:
        m = re.search(decl_re + re.escape(name) + r"(?=[\s:(\[{⦃]|$)", mask)
    renamed = m is None
    if m is None:  # fall back to the last theorem/lemma the model wrote
        found = list(re.finditer(decl_re + r"[^\s:(\[{⦃]+", mask))
        if not found:
            return None
        m = found[-1]
    kw = m.start(1)
    signature, assign = _lean_signature(code, mask, kw)
    if assign == -1:
        return None
    trusted_mask = _lean_mask(statement)
    tm = re.search(rf"(?<![\w.]){_LEAN_DECL_KW}\s", trusted_mask)
    trusted_sig = _lean_signature(statement, trusted_mask, tm.start() if tm else 0)[0]
    after = assign + 2
    rest_mask = mask[after:]
    stripped = rest_mask.lstrip()
    lead = len(rest_mask) - len(stripped)
    if re.match(r"by(?=\s|$)", stripped):
        proof = _lean_tactic_block(code[after + lead + 2 :])
    else:  # term-mode proof: the trusted statement ends in `by`, so wrap it in `exact`
        block = _lean_tactic_block(code[after:])
        proof = None if block is None else "  exact " + block.lstrip()
    if not proof:
        return None
    line_start = code.rfind("\n", 0, m.start()) + 1
    helpers = _lean_helpers(code[:line_start])
    changed = renamed or signature != trusted_sig
    return ExtractedProof(proof, helpers, changed)


def extract_lean_chat(statement: str, answer: str) -> ExtractedProof | None:
    """The last complete ```lean4 (or ```lean) block; an untagged block only if no tagged
    one exists and it declares the theorem."""
    code = last_code_block(answer, LEAN_LANGS)
    if code is None:
        name = lean_theorem_name(statement) or "\0"
        for b in reversed(code_blocks(answer)):
            if b.closed and b.lang == "" and name in b.code:
                code = b.code
                break
    if code is None:
        return None
    return extract_lean_code(statement, code)


# ----------------------------------------------------------------------------- Coq

_COQ_DECL_KW = r"(?:Theorem|Lemma|Fact|Remark|Corollary|Proposition|Example)"
_COQ_REQUIRE = re.compile(r"^(?:From\s+\S+\s+)?Require\b")
_COQ_PROOF = re.compile(r"^Proof\b")
_COQ_END = re.compile(r"(?:^|[\s{}+*-])(?:Qed|Defined|Admitted|Abort(?:\s+All)?|Save\s+\S+)\s*\.$")


def _coq_mask(text: str) -> str:
    """``text`` with comments blanked and string contents masked (the verifier's Coq lexer,
    tolerant of output cut off inside a comment or string)."""
    return coq_mask(text, strict=False)


@dataclass(frozen=True)
class _Sentence:
    start: int  # includes the whitespace/comments/bullets before it
    end: int  # just after the terminating '.'
    text: str  # masked, stripped (comments blanked): use for matching


def coq_sentences(text: str) -> list[_Sentence]:
    """Split Coq text into sentences ('.' followed by whitespace or end of text, outside
    comments and strings). Trailing text without a terminating '.' is a last sentence."""
    mask = _coq_mask(text)
    out: list[_Sentence] = []
    start = 0
    for i, c in enumerate(mask):
        if c != "." or (i + 1 < len(mask) and not mask[i + 1].isspace()):
            continue
        if i > 0 and mask[i - 1] == ".":  # `..` notation, not an end of sentence
            continue
        if mask[start : i + 1].strip() in ("", "."):
            continue
        out.append(_Sentence(start, i + 1, _norm(mask[start : i + 1])))
        start = i + 1
    if mask[start:].strip():
        out.append(_Sentence(start, len(text), _norm(mask[start:])))
    return out


def coq_theorem_name(statement: str) -> str | None:
    m = re.search(rf"{_COQ_DECL_KW}\s+([^\s:(]+)", _coq_mask(statement))
    return m.group(1) if m else None


def _strip_bullets(s: str) -> str:
    return s.lstrip("-+*{} \t\n")


def _coq_header_sentences(header: str) -> set[str]:
    return {_norm(header[s.start : s.end]) for s in coq_sentences(header)}


def _extract_coq(
    header: str, statement: str, code: str, *, continuation: bool
) -> ExtractedProof | None:
    sents = coq_sentences(code)
    if not sents:
        return None
    name = coq_theorem_name(statement)
    decl_re = re.compile(
        rf"^(?:#\[[^\]]*\]\s*)?(?:(?:Local|Global)\s+)?{_COQ_DECL_KW}\s+(\S+?)(?=[\s:(]|$)"
    )
    idx = None
    changed = False
    for i, s in enumerate(sents):
        m = decl_re.match(s.text)
        if m and m.group(1) == name:
            idx = i
            break
    if idx is None and not continuation:
        decls = [i for i, s in enumerate(sents) if decl_re.match(s.text)]
        if decls:
            idx, changed = decls[-1], True
    if idx is not None:
        pre, post = sents[:idx], sents[idx + 1 :]
        trusted = _norm(_coq_mask(statement))
        changed = changed or _norm(sents[idx].text) != trusted
    elif continuation:
        k = 0
        while k < len(sents) and _COQ_REQUIRE.match(sents[k].text):
            k += 1
        pre, post = sents[:k], sents[k:]
    else:  # a chat block with no theorem: accept a bare `Proof. ... Qed.`
        starts = [i for i, s in enumerate(sents) if _COQ_PROOF.match(_strip_bullets(s.text))]
        if not starts:
            return None
        pre, post = sents[: starts[0]], sents[starts[0] :]
    if not post:
        return None
    end_i = next((i for i, s in enumerate(post) if _COQ_END.search(" " + s.text)), None)
    if end_i is None:
        # no closing Qed/Defined/Admitted/Abort: the proof is left open, which can only
        # fail; record it as no proof rather than spend a verifier call on it
        return None
    last = post[end_i]
    proof_body = code[post[0].start : last.end].strip()
    if not _coq_mask(proof_body).strip():
        return None
    in_header = _coq_header_sentences(header)
    requires: list[str] = []
    helper_parts: list[str] = []
    for s in pre:
        raw = code[s.start : s.end]
        if _COQ_REQUIRE.match(s.text):
            r = _norm(_coq_strip_comments(raw))
            if r not in in_header and r not in requires:
                requires.append(r)
        elif _norm(raw) not in in_header:
            helper_parts.append(raw)
    helpers = "".join(helper_parts).strip()
    proof = "\n".join([*requires, proof_body])
    return ExtractedProof(proof, helpers, changed)


def _coq_strip_comments(s: str) -> str:
    mask = _coq_mask(s)
    return "".join(c if m != " " or c.isspace() else " " for c, m in zip(s, mask))


def extract_coq_continuation(header: str, statement: str, completion: str) -> ExtractedProof | None:
    """A completion that continues after the trusted ``Theorem ... .`` inside a ``coq`` fence."""
    return _extract_coq(header, statement, cut_at_fence(completion), continuation=True)


def extract_coq_code(header: str, statement: str, code: str) -> ExtractedProof | None:
    return _extract_coq(header, statement, code, continuation=False)


def extract_coq_chat(header: str, statement: str, answer: str) -> ExtractedProof | None:
    """The last complete ```coq block (also ```rocq / ```v, then an untagged one)."""
    code = last_code_block(answer, COQ_LANGS)
    if code is None:
        code = last_code_block(answer, ("",))
    if code is None:
        return None
    return extract_coq_code(header, statement, code)


# ----------------------------------------------------------------------------- dispatch


def extract(itp: str, kind: str, header: str, statement: str, text: str) -> ExtractedProof | None:
    """``itp``: "lean" | "coq"; ``kind``: "completion" (text continues the prompt's open
    fence) | "chat" (a full answer with fenced blocks)."""
    itp = itp.lower()
    if itp not in ("lean", "coq"):
        raise ValueError(f"unknown ITP {itp!r} (lean | coq)")
    if kind not in ("completion", "chat"):
        raise ValueError(f"unknown prompt kind {kind!r} (completion | chat)")
    if itp == "lean":
        if kind == "completion":
            return extract_lean_continuation(text)
        return extract_lean_chat(statement, text)
    if kind == "completion":
        return extract_coq_continuation(header, statement, text)
    return extract_coq_chat(header, statement, text)
