"""Seed selection: solved statements, one of their proofs, and a lemma that proof uses.

STP's recipe: seeds are statements whose best success rate exceeds the conjecture threshold
plus 0.1 (0.35 with the default 0.25), each paired with one of its correct proofs and either a
lemma the proof uses or (with probability 0.5) an empty placeholder lemma; no lemma is used more
than 0.1 x dataset-size times. STP read the premises from Lean's REPL; here the lemma names are
read from the proof text:

- Lean: qualified or snake_case identifiers in the proof (``Nat.succ_le_iff``, ``sq_nonneg``),
  minus tactic names and names the statement or the proof binds (hypotheses, ``have``s...).
- Coq: the heads of ``apply/eapply/exact/rewrite/pose proof/specialize/... using`` arguments
  (``apply Rmult_le_compat``, ``rewrite Nat.add_comm, <- Z.mul_comm``), minus local names.

Everything here is pure; the database reads live in :mod:`conjecturer.store`.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from conjecturer.prompts import bound_names, strip_comments


@dataclass(frozen=True)
class SeedProof:
    attempt_id: int
    proof: str


@dataclass(frozen=True)
class SeedCandidate:
    """A solved statement with its correct proofs (from the database)."""

    statement_id: int
    itp: str
    name: str
    header: str
    formal_statement: str
    best_pass_rate: float
    proofs: tuple[SeedProof, ...]


@dataclass(frozen=True)
class Seed:
    statement_id: int
    attempt_id: int
    itp: str
    header: str
    formal_statement: str
    proof: str
    lemma_name: str  # "" = the empty placeholder
    lemma: str  # what the prompt shows: the lemma's statement when resolved, else its name


# ----------------------------------------------------------------------------- lemma names

_IDENT = r"@?([A-Za-z_][\w'.]*[\w'])"
_COQ_USES = re.compile(
    r"(?<![\w.])(?:e?apply|e?exact|e?rewrite|pose\s+proof|specialize|generalize|"
    r"e?assert\s*\([^()]*\)\s*by\s+(?:e?apply|e?exact))\s+((?:[^.]|\.(?=\S))*)"
)
_COQ_USING = re.compile(r"(?<![\w.])using\s+((?:[^.]|\.(?=\S))*)")
_COQ_LOCAL_INTRO = re.compile(
    r"(?<![\w.])(?:intros?|revert|clear|subst|induction|destruct|case)\s+((?:[^.]|\.(?=\S))*)"
)
_COQ_AS = re.compile(r"(?<![\w.])as\s+((?:\[[^\]]*\]|\S)+)")
_COQ_NAMED_HYP = re.compile(r"(?<![\w.])(?:assert|set|pose|remember|cut)\s*\(\s*([A-Za-z_][\w']*)\s*:")

LEAN_TACTICS = frozenset({
    "norm_num", "simp", "simp_all", "simp_arith", "field_simp", "ring_nf", "ring", "linarith",
    "nlinarith", "positivity", "omega", "decide", "aesop", "exact", "apply", "rw", "rwa", "intro",
    "intros", "obtain", "rcases", "rintro", "constructor", "refine", "use", "have", "show",
    "calc", "by_contra", "by_cases", "push_neg", "push_cast", "norm_cast", "exact_mod_cast",
    "rw_mod_cast", "assumption_mod_cast", "interval_cases", "split_ifs", "all_goals", "any_goals",
    "first", "try", "repeat", "case", "cases", "induction", "specialize", "exists", "left",
    "right", "exfalso", "contradiction", "trivial", "gcongr", "nlinarith!", "linarith!", "bound",
    "polyrith", "tauto", "congr", "ext", "funext", "unfold", "dsimp", "change", "subst",
    "norm_num1", "simp_rw", "zify", "qify", "lift", "set", "let", "fun", "at", "with", "only",
    "this", "exact?", "apply?", "decreasing_by", "termination_by", "conv", "arg", "lhs", "rhs",
    "next", "rfl", "symm", "trans", "nth_rewrite", "nth_rw", "refine'", "convert",
    "filter_upwards", "field_simps", "ring1", "ring_nf!", "abel", "group",
})
_LEAN_LOCAL_BIND = re.compile(
    r"(?<![\w.])(?:intro|intros|rintro|have|obtain|set|let|fun|generalize|cases'|"
    r"rcases|induction'|by_contra|by_contra!|by_cases|case)\s+((?:[^\n:=]|:(?!=))*)"
)
_LEAN_ID = re.compile(r"(?<![\w'.])[^\W\d][\w'.]*[\w']|(?<![\w'.])[^\W\d](?![\w'.])")


def _coq_locals(statement: str, proof: str) -> set[str]:
    names = set(bound_names("coq", statement))
    for rx in (_COQ_LOCAL_INTRO, _COQ_AS):
        for m in rx.finditer(proof):
            names.update(re.findall(r"[A-Za-z_][\w']*", m.group(1)))
    names.update(m.group(1) for m in _COQ_NAMED_HYP.finditer(proof))
    return names


def _head_idents(arg_list: str) -> list[str]:
    """Heads of a comma-separated argument list: ``<- A x, !B, (C y)`` -> ``[A, B, C]``."""
    heads = []
    depth, cur = 0, []
    parts: list[str] = []
    for c in arg_list:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    for p in parts:
        p = re.sub(r"^\s*(?:<-|->|!|\?|\d+)?\s*\(*\s*", "", p)
        m = re.match(_IDENT, p)
        if m:
            heads.append(m.group(1))
    return heads


def coq_lemmas(statement: str, proof: str) -> list[str]:
    """Global lemma names a Coq proof applies, rewrites with or names in ``using``."""
    text = strip_comments("coq", proof)
    local = _coq_locals(statement, text)
    out: list[str] = []
    for rx in (_COQ_USES, _COQ_USING):
        for m in rx.finditer(text):
            arg = re.split(r"(?<![\w.])(?:in|with|as|at|by)(?![\w'])", m.group(1))[0]
            for name in _head_idents(arg):
                if name in local or name in out:
                    continue
                if "_" in name or "." in name:
                    out.append(name)
    return out


def _lean_locals(statement: str, proof: str) -> set[str]:
    names = set(bound_names("lean", statement))
    for m in _LEAN_LOCAL_BIND.finditer(proof):
        names.update(re.findall(r"[^\W\d][\w']*", m.group(1).split(":=")[0]))
    return names


def lean_lemmas(statement: str, proof: str) -> list[str]:
    """Qualified or snake_case constant names a Lean proof mentions."""
    text = strip_comments("lean", proof)
    local = _lean_locals(statement, text)
    out: list[str] = []
    for m in _LEAN_ID.finditer(text):
        name = m.group()
        if name in LEAN_TACTICS or name in out or name.endswith("?"):
            continue
        if name.split(".")[0] in local:  # `h.1`, `h₀.le`: projections of a hypothesis
            continue
        if "_" in name or ("." in name and name[0].isupper()):
            out.append(name)
    return out


def lemmas_used(itp: str, statement: str, proof: str) -> list[str]:
    return lean_lemmas(statement, proof) if itp == "lean" else coq_lemmas(statement, proof)


# ----------------------------------------------------------------------------- selection


def select_seeds(
    candidates: Sequence[SeedCandidate],
    *,
    dataset_size: int,
    min_pass_rate: float = 0.35,
    empty_lemma_prob: float = 0.5,
    lemma_cap_fraction: float = 0.1,
    seeds_per_statement: int = 1,
    max_seeds: int | None = None,
    seed: int = 0,
    resolve_lemma: Callable[[str, str], str | None] | None = None,
) -> list[Seed]:
    """Pick seeds: candidates with best pass rate > ``min_pass_rate``, a random correct proof,
    and a lemma of that proof (or the empty placeholder with probability ``empty_lemma_prob``,
    or when the proof uses no lemma still under its cap of ``lemma_cap_fraction *
    dataset_size`` uses). ``resolve_lemma(header, name)`` may turn a name into the lemma's
    statement for the prompt. Deterministic for a given ``seed``."""
    rng = random.Random(seed)
    cap = max(1, int(lemma_cap_fraction * dataset_size))
    uses: Counter[str] = Counter()
    eligible = sorted(
        (c for c in candidates if c.best_pass_rate > min_pass_rate and c.proofs),
        key=lambda c: c.statement_id,
    )
    rng.shuffle(eligible)
    resolved: dict[tuple[str, str], str] = {}
    out: list[Seed] = []
    for c in eligible:
        proofs = sorted(c.proofs, key=lambda p: p.attempt_id)
        for _ in range(seeds_per_statement):
            if max_seeds is not None and len(out) >= max_seeds:
                return out
            p = rng.choice(proofs)
            name = ""
            if rng.random() >= empty_lemma_prob:
                avail = [n for n in lemmas_used(c.itp, c.formal_statement, p.proof)
                         if uses[n] < cap]
                if avail:
                    name = rng.choice(avail)
                    uses[name] += 1
            shown = ""
            if name:
                key = (c.header, name)
                if key not in resolved:
                    got = resolve_lemma(c.header, name) if resolve_lemma else None
                    resolved[key] = got.strip() if got and got.strip() else name
                shown = resolved[key]
            out.append(Seed(c.statement_id, p.attempt_id, c.itp, c.header, c.formal_statement,
                            p.proof, name, shown))
    return out


def coq_lemma_resolver(backend: Any, *, timeout: float = 20.0) -> Callable[[str, str], str | None]:
    """``resolve_lemma`` for Coq: the lemma's statement as ``name : type``, read through the
    backend's ``open_goals`` (``pose proof (name)`` in a throw-away proof of ``True``: the one
    open goal is ``type -> True``). None when the name does not resolve."""

    def resolve(header: str, name: str) -> str | None:
        if not re.fullmatch(r"[A-Za-z_][\w'.]*", name):
            return None
        goals = backend.open_goals(header, "Theorem lemma_probe : True.",
                                   f"Proof.\n  pose proof ({name}) as lemma_probe_h.",
                                   timeout=timeout)
        if len(goals) != 1 or not goals[0].endswith(" -> True"):
            return None
        typ = goals[0][: -len(" -> True")].strip()
        if typ.startswith("(") and typ.endswith(")"):
            inner = typ[1:-1]
            depth = 0
            for ch in inner:
                depth += {"(": 1, ")": -1}.get(ch, 0)
                if depth < 0:
                    break
            else:
                typ = inner
        return f"{name} : {typ}"

    return resolve
