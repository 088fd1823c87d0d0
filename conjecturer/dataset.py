"""Training-set assembly for both roles (pure functions plus an HF ``datasets`` writer).

Prover examples (STP): correct proofs of statements whose pass rate (this round) is <= 0.5;
each weighted ``exp(-0.001 * len(proof)) / u`` where ``u`` is the number of unique correct
proofs of that statement (before the per-statement cap); at most 16 per statement (shortest
first, then lowest attempt id); deduplicated on (prompt, completion). STP also subtracted
``0.01 * verify_seconds`` in the exponent; that term is off by default (``time_coef=0``)
because verify times differ across machines and backends.

The prompt is the prover prompt format's prompt (``prover.prompts``); for completion formats
the completion is the proof followed by the closing fence, exactly what the model would have
had to write (proofs that need helper lemmas before the theorem cannot be written as a
continuation and are skipped there); for chat formats it is one fenced block with the helpers,
statement and proof.

Conjecturer examples: the selected conjectures; prompt = :func:`conjecture_prompt` of the
seed (lemma, seed statement, seed proof), completion = the conjecture statement followed by
``</hard theorem>``, weight = the relevance weight.

Both are written with ``datasets.Dataset.save_to_disk`` with the columns
``prompt, completion, weight, role, round, statement_id, statement_ids, attempt_id,
conjecture_id``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conjecturer.prompts import conjecture_completion, conjecture_prompt


@dataclass(frozen=True)
class CorrectProof:
    statement_id: int
    attempt_id: int
    itp: str
    header: str
    formal_statement: str
    proof: str
    helpers: str = ""
    informal: str | None = None
    verify_seconds: float = 0.0


@dataclass(frozen=True)
class SelectedConjecture:
    conjecture_id: int
    statement_id: int
    seed_statement_id: int
    seed_attempt_id: int | None
    itp: str
    lemma: str
    seed_statement: str
    seed_proof: str
    statement: str
    weight: float


@dataclass(frozen=True)
class TrainingExample:
    prompt: str
    completion: str
    weight: float
    role: str  # "prover" | "conjecturer"
    round: int | None
    statement_id: int
    statement_ids: list[int] = field(default_factory=list)
    attempt_id: int | None = None
    conjecture_id: int | None = None


COLUMNS = ("prompt", "completion", "weight", "role", "round", "statement_id", "statement_ids",
           "attempt_id", "conjecture_id")


def proof_weight(proof: str, n_unique: int, *, length_coef: float = 0.001,
                 time_coef: float = 0.0, verify_seconds: float = 0.0) -> float:
    return math.exp(-length_coef * len(proof) - time_coef * verify_seconds) / max(n_unique, 1)


def _prover_pair(p: CorrectProof, fmt: Any) -> tuple[str, str] | None:
    built = fmt.build(p.header, p.formal_statement, p.informal)
    if fmt.is_chat:
        lang = "lean4" if p.itp == "lean" else "coq"
        stmt = p.formal_statement if p.formal_statement.endswith("\n") else p.formal_statement + "\n"
        code = (p.helpers + "\n\n" if p.helpers else "") + stmt + p.proof
        return json.dumps(built, ensure_ascii=False), f"```{lang}\n{code}\n```"
    if p.helpers:
        return None
    return built, p.proof + "\n```"


def prover_examples(
    proofs: Sequence[CorrectProof],
    pass_rates: Mapping[int, float],
    *,
    prompt_format: str | None = None,
    max_pass_rate: float = 0.5,
    per_statement: int = 16,
    length_coef: float = 0.001,
    time_coef: float = 0.0,
    round_index: int | None = None,
) -> list[TrainingExample]:
    """Prover training examples from correct proofs (see the module docstring)."""
    from prover.prompts import DEFAULT_FORMAT, get_format

    by_stmt: dict[int, list[CorrectProof]] = defaultdict(list)
    for p in proofs:
        rate = pass_rates.get(p.statement_id)
        if rate is not None and rate <= max_pass_rate:
            by_stmt[p.statement_id].append(p)
    out: list[TrainingExample] = []
    seen: set[tuple[str, str]] = set()
    for sid in sorted(by_stmt):
        group = by_stmt[sid]
        fmt = get_format(prompt_format or DEFAULT_FORMAT[group[0].itp])
        unique: dict[tuple[str, str], CorrectProof] = {}
        for p in sorted(group, key=lambda p: p.attempt_id):
            unique.setdefault((p.helpers, p.proof), p)
        n_unique = len(unique)
        ranked = sorted(unique.values(), key=lambda p: (len(p.proof), p.attempt_id))
        taken = 0
        for p in ranked:
            if taken >= per_statement:
                break
            pair = _prover_pair(p, fmt)
            if pair is None or pair in seen:
                continue
            seen.add(pair)
            taken += 1
            w = proof_weight(p.proof, n_unique, length_coef=length_coef, time_coef=time_coef,
                             verify_seconds=p.verify_seconds)
            out.append(TrainingExample(pair[0], pair[1], w, "prover", round_index, sid, [sid],
                                       p.attempt_id, None))
    return out


def conjecturer_examples(
    selected: Sequence[SelectedConjecture], *, round_index: int | None = None
) -> list[TrainingExample]:
    out: list[TrainingExample] = []
    seen: set[tuple[str, str]] = set()
    for c in sorted(selected, key=lambda c: c.conjecture_id):
        prompt = conjecture_prompt(c.itp, c.lemma, c.seed_statement, c.seed_proof)
        completion = conjecture_completion(c.statement)
        if (prompt, completion) in seen:
            continue
        seen.add((prompt, completion))
        out.append(TrainingExample(prompt, completion, float(c.weight), "conjecturer",
                                   round_index, c.statement_id,
                                   [c.statement_id, c.seed_statement_id], c.seed_attempt_id,
                                   c.conjecture_id))
    return out


def write_dataset(examples: Sequence[TrainingExample], path: str | Path) -> dict[str, Any]:
    """Save as an HF dataset directory (``datasets.load_from_disk(path)`` reads it back).
    Returns a summary for the database: path, rows, weight sum."""
    from datasets import Dataset, Features, Value
    from datasets import Sequence as HFSequence

    features = Features({
        "prompt": Value("string"),
        "completion": Value("string"),
        "weight": Value("float64"),
        "role": Value("string"),
        "round": Value("int64"),
        "statement_id": Value("int64"),
        "statement_ids": HFSequence(Value("int64")),
        "attempt_id": Value("int64"),
        "conjecture_id": Value("int64"),
    })
    rows = [asdict(e) for e in examples]
    data = {c: [r[c] for r in rows] for c in COLUMNS}
    ds = Dataset.from_dict(data, features=features)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one shard even when empty (a 0-shard dataset cannot be loaded back)
    ds.save_to_disk(str(path), num_shards=1)
    return {"path": str(path.resolve()), "rows": len(rows),
            "weight_sum": float(sum(e.weight for e in examples)),
            "statements": len({e.statement_id for e in examples})}
