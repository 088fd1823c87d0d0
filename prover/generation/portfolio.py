"""A non-neural baseline: each proof tries a fixed portfolio of decision procedures.

:func:`proofs_for` gives the proofs directly (in the form :class:`prover.extract.ExtractedProof`
uses: a Lean tactic block for after ``:= by``, or Coq ``Require`` line + ``Proof. ... Qed.``).
:class:`PortfolioGenerator` plugs the same proofs into the generation interface: it reads the
ITP and the statement back out of prompts built by :mod:`prover.prompts` (the last ``lean4`` /
``coq`` fence) and answers in the shape the prompt's format expects, so that the format's
``extract`` returns exactly these proofs:

- ``generate`` (completion formats): the continuation after the statement, closed by a fence;
- ``chat`` (chat formats): one fenced block holding the statement and the proof.

Sample ``j`` of ``n`` is variant ``j mod len(variants)``: deterministic, no seed involved.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from prover.extract import _coq_mask, _lean_mask, code_blocks, coq_sentences
from prover.generation.base import ChatMessage, Completion, ProgressCallback, SamplingParams

LEAN_TACTICS = (
    "omega",
    "norm_num",
    "linarith",
    "nlinarith",
    "positivity",
    "simp",
    "decide",
    "aesop",
    "ring_nf",
    "field_simp",
)
# tactics that may succeed without closing the goal: only accepted if nothing is left
_LEAN_NONTERMINAL = {"norm_num", "simp", "ring_nf", "field_simp", "aesop", "simp_all"}

COQ_TACTICS = (
    "lia",
    "nia",
    "lra",
    "nra",
    "ring",
    "field",
    "auto",
    "tauto",
    "reflexivity",
    "easy",
    "intuition",
    "congruence",
    "discriminate",
    "trivial",
    "psatz R",
)
COQ_REQUIRE = "Require Import Arith ZArith Lia Reals Lra Psatz Field."

_LEAN_REAL = re.compile(r"ℝ|\bReal\.|\bℂ")
_COQ_REAL = re.compile(r"%R\b|:\s*R\b|\bR\)|\bRle\b|\bRlt\b|\bsqrt\b|\bRabs\b|\bINR\b|\bIZR\b")


def _lean_order(statement: str) -> list[str]:
    if _LEAN_REAL.search(statement):
        first = ["linarith", "nlinarith", "positivity", "norm_num", "field_simp", "ring_nf"]
    else:
        first = ["omega", "norm_num", "decide", "linarith", "nlinarith", "simp"]
    return first + [t for t in LEAN_TACTICS if t not in first]


def _lean_first(tactics: Sequence[str]) -> str:
    alts = [f"({t}; done)" if t in _LEAN_NONTERMINAL else t for t in tactics]
    return "first | " + " | ".join(alts)


def _lean_real_vars(statement: str) -> list[str]:
    names: list[str] = []
    for m in re.finditer(r"[(\{]\s*([^():{}]+?)\s*:\s*ℝ\s*[)\}]", _lean_mask(statement)):
        names += [v for v in m.group(1).split() if re.fullmatch(r"[^\W\d][\w'₀-₉]*", v)]
    return names[:3]


def lean_proofs(statement: str) -> list[str]:
    order = _lean_order(statement)
    closer = "  all_goals " + _lean_first(order)
    variants = [
        [closer],
        ["  intros", "  try subst_vars", closer],
        ["  try norm_num at *", closer],
        ["  try refine ⟨?_, ?_⟩", closer],
        ["  try simp_all", closer],
        ["  try field_simp at *", "  try ring_nf at *", closer],
        ["  intros", "  all_goals " + _lean_first(list(reversed(order)))],
    ]
    xs = _lean_real_vars(statement)
    if xs:
        hints = [f"sq_nonneg ({a} - {b})" for i, a in enumerate(xs) for b in xs[i + 1 :]]
        hints += [f"sq_nonneg ({a} + {b})" for i, a in enumerate(xs) for b in xs[i + 1 :]]
        hints += [f"sq_nonneg {a}" for a in xs]
        variants.insert(
            1,
            [
                "  all_goals first | nlinarith ["
                + ", ".join(hints)
                + "] | "
                + _lean_first(order).removeprefix("first | ")
            ],
        )
    return ["\n".join(v) for v in variants]


def _coq_order(statement: str) -> list[str]:
    if _COQ_REAL.search(statement):
        first = ["lra", "nra", "field", "ring", "psatz R"]
    else:
        first = ["lia", "nia", "ring", "reflexivity", "easy"]
    return first + [t for t in COQ_TACTICS if t not in first]


def coq_proofs(statement: str) -> list[str]:
    order = _coq_order(statement)
    solve = "solve [ " + " | ".join(order) + " ]"
    rsolve = "solve [ " + " | ".join(reversed(order)) + " ]"
    bodies = [
        f"intros; {solve}.",
        f"intros; try subst; {solve}.",
        f"intros; simpl in *; {solve}.",
        f"intros; repeat split; {solve}.",
        f"intros; try field_simplify; {solve}.",
        f"intros; {rsolve}.",
    ]
    return [f"{COQ_REQUIRE}\nProof.\n  {b}\nQed." for b in bodies]


def proofs_for(itp: str, statement: str) -> list[str]:
    """All portfolio proofs for a statement, in a fixed order."""
    itp = itp.lower()
    if itp == "lean":
        return lean_proofs(statement)
    if itp == "coq":
        return coq_proofs(statement)
    raise ValueError(f"unknown ITP {itp!r} (lean | coq)")


@dataclass(frozen=True)
class ParsedPrompt:
    itp: str
    statement: str
    closed: bool  # the statement sits in a closed fence (chat prompt) or an open one


_LANG_ITP = {"lean4": "lean", "lean": "lean", "coq": "coq", "rocq": "coq"}


def parse_prompt(text: str, default_itp: str | None = None) -> ParsedPrompt | None:
    """The ITP and the theorem statement of a prompt built by :mod:`prover.prompts` (an
    untagged fence counts as ``default_itp``)."""
    for block in reversed(code_blocks(text)):
        itp = _LANG_ITP.get(block.lang) or (default_itp if block.lang == "" else None)
        if itp is None:
            continue
        st = _lean_statement(block.code) if itp == "lean" else _coq_statement(block.code)
        if st:
            return ParsedPrompt(itp, st, block.closed)
    return None


def _lean_statement(code: str) -> str | None:
    found = list(re.finditer(r"(?m)^[ \t]*(?:theorem|lemma)\s", _lean_mask(code)))
    if not found:
        return None
    st = code[found[-1].start() :].rstrip() + "\n"
    return st


def _coq_statement(code: str) -> str | None:
    decl = re.compile(r"(?:Theorem|Lemma|Fact|Remark|Corollary|Proposition|Example)\s")
    sents = [s for s in coq_sentences(code) if decl.match(s.text)]
    if not sents:
        return None
    s = sents[-1]
    # the sentence span starts after the previous '.', so skip comments before the keyword
    m = decl.search(_coq_mask(code), s.start, s.end)
    return code[m.start() if m else s.start : s.end].strip()


def single_tactic_proofs(itp: str, statement: str) -> list[str]:
    """One decision procedure per proof, in the statement's domain order: short proofs that
    make good supervised data (a model learns which tactic fits which kind of statement)."""
    if itp == "lean":
        return [f"  {t}" for t in _lean_order(statement)]
    return [f"{COQ_REQUIRE}\nProof.\n  intros; {t}.\nQed." for t in _coq_order(statement)]


class PortfolioGenerator:
    name = "portfolio"

    def __init__(self, itp: str | None = None, model: str | None = None, *,
                 single: bool = False, **_: object) -> None:
        self.itp = itp.lower() if itp else None
        self.single = single
        self.model = model or ("portfolio-single" if single else "portfolio")

    def proofs_for(self, itp: str, statement: str) -> list[str]:
        return single_tactic_proofs(itp, statement) if self.single else proofs_for(itp, statement)

    def _pick(self, itp: str, statement: str, n: int) -> list[str]:
        proofs = self.proofs_for(itp, statement)
        return [proofs[j % len(proofs)] for j in range(n)]

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[list[Completion]]:
        out = []
        for p in prompts:
            parsed = parse_prompt(p, self.itp)
            if parsed is None:
                out.append([Completion("", 0, 0, "stop")] * params.n)
            else:
                # the completion continues the open fence right after the statement
                out.append(
                    [
                        Completion(pr + "\n```\n", 0, 0, "stop")
                        for pr in self._pick(parsed.itp, parsed.statement, params.n)
                    ]
                )
            if progress:
                progress(1)
        return out

    def chat(
        self,
        conversations: Sequence[list[ChatMessage]],
        params: SamplingParams,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[list[Completion]]:
        out = []
        for conv in conversations:
            parsed = None
            # the statement is in a user turn; correction turns come later, so search back
            for m in reversed(conv):
                if m.get("role") == "user":
                    parsed = parse_prompt(str(m.get("content", "")), self.itp)
                    if parsed:
                        break
            if parsed is None:
                out.append([Completion("No statement found.", 0, 0, "stop")] * params.n)
            else:
                out.append(
                    [
                        Completion(_chat_answer(parsed, pr), 0, 0, "stop")
                        for pr in self._pick(parsed.itp, parsed.statement, params.n)
                    ]
                )
            if progress:
                progress(1)
        return out


def _chat_answer(parsed: ParsedPrompt, proof: str) -> str:
    intro = "Proof attempt by a fixed portfolio of decision procedures.\n\n"
    if parsed.itp == "lean":
        return f"{intro}```lean4\n{parsed.statement}{proof}\n```\n"
    require, _, rest = proof.partition("\n")
    return f"{intro}```coq\n{require}\n\n{parsed.statement}\n{rest}\n```\n"
