"""Scaffolded data synthesis (Goedel-Prover-V2): sub-goals of failed proofs, and negations.

A failed proof often gets part of the way: the goals left open where it broke are easier
statements the prover may learn from. Each becomes a new statement (with its hypotheses), and
since a sub-goal may be false, so does its negation.

- Coq: the proof's sentences are run up to the first failing one (located from the verdict's
  error position; without one, sentence prefixes are tried in order and the last that
  elaborates is used) with ``backend.open_goals``, which prints each open goal as a closed
  proposition (hypotheses reverted into ``forall``/``->``). Sub-goal: ``Theorem scaf_<h> :
  G.``; negation: ``Theorem scafneg_<h> : ~ (G).``
- Lean (best effort, no REPL needed): goal states printed in the stored verdict messages
  (``unsolved goals`` errors, tactic failures that print the goal) are parsed: hypotheses
  ``x y : T`` become binders ``(x y : T)`` (instances ``[T]``; inaccessible ``h✝`` names get
  fresh names), the ``⊢`` target the conclusion: ``theorem scaf_<h> binders : G := by``;
  negation ``theorem scafneg_<h> : ¬ (∀ binders, G) := by``.

Candidates are deduplicated (alpha-normalized, against known statements and each other) and
checked with ``backend.check_statement``; a negation is only kept when its sub-goal is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from conjecturer.filters import FilterResult
from conjecturer.prompts import alpha_key, fresh_name
from prover.extract import coq_sentences

SUBGOAL = "scaffold-subgoal"
NEGATION = "scaffold-negation"


@dataclass(frozen=True)
class Scaffold:
    itp: str
    header: str
    statement: str
    name: str
    origin: str  # SUBGOAL | NEGATION
    parent_statement_id: int
    parent_attempt_id: int
    subgoal_name: str | None = None  # for a negation: the sub-goal it negates


# ----------------------------------------------------------------------------- Coq


def _msg_get(m: Any, key: str) -> Any:
    return m.get(key) if isinstance(m, dict) else getattr(m, key, None)


def _offset(text: str, line: int, column: int | None) -> int:
    lines = text.split("\n")
    line = max(1, min(line, len(lines)))
    off = sum(len(x) + 1 for x in lines[: line - 1])
    return off + max(0, min(column or 0, len(lines[line - 1])))


def coq_failure_index(proof: str, messages: Sequence[Any]) -> int | None:
    """Index (in ``coq_sentences(proof)``) of the sentence the first in-proof error points
    at, or None when no error has a position inside the proof."""
    sents = coq_sentences(proof)
    for m in messages:
        if _msg_get(m, "severity") != "error" or not _msg_get(m, "in_proof"):
            continue
        line = _msg_get(m, "line")
        if line is None:
            continue
        off = _offset(proof, int(line), _msg_get(m, "column"))
        for i, s in enumerate(sents):
            if off < s.end:
                return i
        return len(sents) - 1 if sents else None
    return None


_COQ_TERMINATOR = re.compile(r"^(?:Qed|Defined|Admitted|Abort|Save)\b")


def coq_open_goals(backend: Any, header: str, statement: str, proof: str,
                   messages: Sequence[Any], *, timeout: float = 20.0,
                   max_scan: int = 30) -> list[str]:
    """The goals open where the proof broke, each a closed proposition."""
    sents = coq_sentences(proof)
    if not sents:
        return []
    # never run the terminator: what is open before `Qed.` is what was left unproved
    last = len(sents)
    for i, s in enumerate(sents):
        if _COQ_TERMINATOR.match(s.text.lstrip("-+*{} ")):
            last = i
            break
    k = coq_failure_index(proof, messages)
    limit = last
    if k is not None:
        k = min(k, last)
        if k == 0:
            return []
        # include the failing sentence's own bullets/braces: they focus its goal
        seg = proof[sents[k].start : sents[k].end]
        lead = len(seg) - len(seg.lstrip(" \t\n-+*{}"))
        prefix = proof[: sents[k].start + lead]
        if proof[sents[k].start : sents[k].start + lead].strip():
            # a bare bullet must be followed by a tactic before the goals can be printed
            prefix = prefix.rstrip() + " idtac."
        goals = backend.open_goals(header, statement, prefix, timeout=timeout)
        if goals:
            return goals
        limit = k
    # no usable position (a timeout), or the prefix did not elaborate: scan prefixes forward
    # and keep the goals of the last one that elaborates before the first that does not
    best: list[str] = []
    for j in range(1, min(limit, max_scan) + 1):
        goals = backend.open_goals(header, statement, proof[: sents[j - 1].end], timeout=timeout)
        if goals:
            best = goals
        elif best:
            break
    return best


def coq_scaffolds(header: str, goal: str, *, parent_statement_id: int,
                  parent_attempt_id: int) -> tuple[Scaffold, Scaffold]:
    sub = f"Theorem _ : {goal}."
    name = fresh_name("coq", sub, "scaf")
    neg = f"Theorem _ : ~ ({goal})."
    nname = fresh_name("coq", neg, "scafneg")
    return (
        Scaffold("coq", header, f"Theorem {name} : {goal}.", name, SUBGOAL,
                 parent_statement_id, parent_attempt_id),
        Scaffold("coq", header, f"Theorem {nname} : ~ ({goal}).", nname, NEGATION,
                 parent_statement_id, parent_attempt_id, name),
    )


# ----------------------------------------------------------------------------- Lean


@dataclass(frozen=True)
class LeanGoal:
    hypotheses: tuple[tuple[str, str], ...]  # (names as written, type)
    target: str


def parse_lean_goals(text: str) -> list[LeanGoal]:
    """Goal states in a Lean message: blocks of ``names : type`` lines ending in ``⊢ target``
    (continuation lines are indented; ``case`` labels are skipped)."""
    goals: list[LeanGoal] = []
    hyps: list[tuple[str, str]] = []
    target: list[str] | None = None
    lines = text.split("\n")

    def flush() -> None:
        nonlocal hyps, target
        if target is not None:
            goals.append(LeanGoal(tuple(hyps), " ".join(" ".join(target).split())))
        hyps, target = [], None

    for ln in lines:
        if not ln.strip():
            flush()
            continue
        if ln.startswith("⊢"):
            target = [ln[1:].strip()]
            continue
        if ln[:1].isspace():
            if target is not None:
                target.append(ln.strip())
            elif hyps:
                n, t = hyps[-1]
                hyps[-1] = (n, t + " " + ln.strip())
            continue
        if target is not None:
            flush()
        if ln.startswith("case "):
            continue
        m = re.match(r"^([^:]+?)\s:\s(.*)$", ln)
        if m and all(re.match(r"^[^\W\d][\w'.✝]*$", n) for n in m.group(1).split()):
            hyps.append((m.group(1).strip(), m.group(2).strip()))
        else:
            hyps = []  # a header line ("unsolved goals", "linarith failed...")
    flush()
    return goals


def _lean_binders(goal: LeanGoal) -> list[str]:
    out: list[str] = []
    fresh = 0
    for names, typ in goal.hypotheses:
        typ = typ.split(" := ", 1)[0]  # let-bound value dropped (best effort)
        parts = []
        for n in names.split():
            if "✝" in n:
                if n.startswith("inst"):
                    parts.append(None)
                    continue
                n = f"{n.replace('✝', '')}_{fresh}"
                fresh += 1
            parts.append(n)
        if any(p is None for p in parts):
            out.append(f"[{typ}]")
            parts = [p for p in parts if p is not None]
        if parts:
            out.append(f"({' '.join(parts)} : {typ})")
    return out


def lean_scaffolds(header: str, goal: LeanGoal, *, parent_statement_id: int,
                   parent_attempt_id: int) -> tuple[Scaffold, Scaffold]:
    binders = _lean_binders(goal)
    sig = (" ".join(binders) + " " if binders else "")
    sub_body = f"{sig}: {goal.target} := by\n"
    name = fresh_name("lean", f"theorem _ {sub_body}", "scaf")
    inner = f"∀ {' '.join(binders)}, {goal.target}" if binders else goal.target
    neg_body = f": ¬ ({inner}) := by\n"
    nname = fresh_name("lean", f"theorem _ {neg_body}", "scafneg")
    return (
        Scaffold("lean", header, f"theorem {name} {sub_body}", name, SUBGOAL,
                 parent_statement_id, parent_attempt_id),
        Scaffold("lean", header, f"theorem {nname} {neg_body}", nname, NEGATION,
                 parent_statement_id, parent_attempt_id, name),
    )


def lean_goals_from_messages(messages: Sequence[Any]) -> list[LeanGoal]:
    out: list[LeanGoal] = []
    for m in messages:
        if _msg_get(m, "severity") != "error":
            continue
        text = _msg_get(m, "text") or _msg_get(m, "data") or ""
        if "⊢" in text:
            out.extend(parse_lean_goals(text))
    return out


# ----------------------------------------------------------------------------- driver


def extract_scaffolds(attempt: Any, backend: Any = None, *, timeout: float = 20.0,
                      max_goals: int = 8) -> list[Scaffold]:
    """Sub-goal and negation candidates of one failed attempt (a ``store.FailedAttempt``-like
    record: itp, header, formal_statement, proof, messages, statement_id, attempt_id)."""
    pairs: list[tuple[Scaffold, Scaffold]] = []
    if attempt.itp == "coq":
        if backend is None or not hasattr(backend, "open_goals"):
            return []
        goals = coq_open_goals(backend, attempt.header, attempt.formal_statement,
                               attempt.proof, attempt.messages, timeout=timeout)
        uniq = list(dict.fromkeys(goals))[:max_goals]
        pairs = [coq_scaffolds(attempt.header, g, parent_statement_id=attempt.statement_id,
                               parent_attempt_id=attempt.attempt_id) for g in uniq]
    else:
        goals_l = list(dict.fromkeys(lean_goals_from_messages(attempt.messages)))[:max_goals]
        pairs = [lean_scaffolds(attempt.header, g, parent_statement_id=attempt.statement_id,
                                parent_attempt_id=attempt.attempt_id) for g in goals_l]
    return [s for pair in pairs for s in pair]


def filter_scaffolds(
    scaffolds: Sequence[Scaffold], *, check: Any, existing: Iterable[str] = (),
) -> FilterResult[Scaffold]:
    """Dedup (alpha-normalized, against ``existing`` statement texts and each other), then
    ``check(scaffold) -> verdict`` (well-formedness). A negation whose sub-goal was rejected
    as ill-formed is rejected too (it cannot be well-formed either)."""
    seen: set[tuple[str, str]] = set()
    for s in existing:
        for itp in ("coq", "lean"):
            seen.add((itp, alpha_key(itp, s)))
    res: FilterResult[Scaffold] = FilterResult()
    bad_subgoals: set[str] = set()
    for s in scaffolds:
        if s.subgoal_name is not None and s.subgoal_name in bad_subgoals:
            res.rejected.append((s, "invalid:subgoal_invalid"))
            continue
        key = (s.itp, alpha_key(s.itp, s.statement))
        if key in seen:
            res.rejected.append((s, "duplicate"))
            continue
        seen.add(key)
        v = check(s)
        if getattr(v, "proved", v):
            res.kept.append(s)
        else:
            if s.origin == SUBGOAL:
                bad_subgoals.add(s.name)
            res.rejected.append((s, f"invalid:{getattr(v, 'reason', None) or 'ill_formed'}"))
    return res
