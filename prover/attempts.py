"""One sampled completion → one stored attempt (proof extracted, or `no_proof_found`)."""

from __future__ import annotations

import json
from typing import Any

from db import queries
from prover.generation.base import Completion, SamplingParams
from prover.prompts import PromptFormat

# An output with no extractable proof is a failed attempt that costs no verifier time.
NO_PROOF = {"status": "failed", "reason": "no_proof_found", "messages": [], "axioms": [],
            "seconds": 0.0, "backend": "", "backend_version": "", "sandboxed": True}


def prompt_text(prompt: str | list[dict[str, str]]) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def completion_record(
    fmt: PromptFormat, *, key: str, statement_id: int, header: str, formal_statement: str,
    prompt: Any, completion: Completion, params: SamplingParams, model: str | None,
    **fields: Any,
) -> queries.AttemptRecord:
    """The attempt for one completion; `fields` are the remaining AttemptRecord columns
    (run, round, mode, parent, sample index...)."""
    extracted = fmt.extract(header, formal_statement, completion.text)
    return queries.AttemptRecord(
        key=key, statement_id=statement_id,
        proof=extracted.proof if extracted else None,
        helpers=extracted.helpers if extracted else "",
        model=model, prompt=prompt_text(prompt), completion=completion.text,
        prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
        sampling={"n": params.n, "temperature": params.temperature, "top_p": params.top_p,
                  "max_tokens": params.max_tokens, "seed": params.seed},
        verdict=None if extracted else NO_PROOF,
        **fields,
    )
