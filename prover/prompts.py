"""Prompt formats: how a (header, statement) becomes a prompt, and how an answer becomes a proof.

Formats (select with :func:`get_format`):

- ``deepseek-v1.5`` (completion, Lean): ``Complete the following Lean 4 code:`` then an open
  ```` ```lean4 ```` fence holding header, optional informal docstring and the statement; the
  model continues the code after ``:= by``; generation stops at the closing fence.
- ``stp`` (completion, Lean): STP's prover uses the DeepSeek-Prover completion prompt; same
  mechanics as ``deepseek-v1.5``, own name so that runs record which family they used.
- ``goedel-v2`` (chat, Lean): the code in a closed fence, then a request for a proof plan
  followed by the Lean 4 code; the last ```` ```lean4 ```` block of the answer is taken.
- ``coq`` (completion, Coq): ``Complete the following Coq proof:`` and an open ```` ```coq ````
  fence with header and statement; the model writes ``Proof. ... Qed.``.
- ``coq-chat`` (chat, Coq): the Coq counterpart of ``goedel-v2``; last ```` ```coq ```` block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from prover import extract as _extract
from prover.extract import ExtractedProof
from prover.generation.base import (
    ChatMessage,
    Completion,
    Generator,
    ProgressCallback,
    SamplingParams,
)

Prompt = str | list[ChatMessage]


def lean_informal_comment(informal: str | None) -> str:
    """An informal problem text as a Lean doc comment (kept as is when it already is one,
    as in miniF2F's ``informal_prefix``)."""
    if not informal or not informal.strip():
        return ""
    text = informal.strip()
    if not text.startswith("/-"):
        # Lean block comments nest: neutralize markers so the doc comment stays balanced
        text = "/-- " + text.replace("/-", "/ -").replace("-/", "- /") + " -/"
    return text + "\n"


def coq_informal_comment(informal: str | None) -> str:
    if not informal or not informal.strip():
        return ""
    text = informal.strip()
    if text.startswith("/-"):  # a Lean doc comment from a shared data row
        text = text.removeprefix("/--").removeprefix("/-").removesuffix("-/").strip()
    if not text.startswith("(*"):
        # Coq comments nest: neutralize markers in the text so the comment stays balanced
        text = "(* " + text.replace("(*", "( *").replace("*)", "* )") + " *)"
    return text + "\n"


def _lean_code(header: str, statement: str, informal: str | None) -> str:
    return header + lean_informal_comment(informal) + statement


def _coq_code(header: str, statement: str, informal: str | None) -> str:
    st = statement if statement.endswith("\n") else statement + "\n"
    return header + coq_informal_comment(informal) + st


LEAN_PLAN_REQUEST = (
    "Before producing the Lean 4 code to formally prove the given theorem, provide a detailed "
    "proof plan outlining the main proof steps and strategies.\n"
    "The plan should highlight key ideas, intermediate lemmas, and proof structures that will "
    "guide the construction of the final formal proof."
)
COQ_PLAN_REQUEST = (
    "Before writing the Coq code, give a short proof plan: the main steps, the key facts and "
    "lemmas you will need, and which tactics should close each step.\n"
    "Then write the complete Coq code (the theorem followed by Proof. ... Qed.) in one ```coq "
    "block."
)


def build_deepseek(header: str, statement: str, informal: str | None = None) -> str:
    return "Complete the following Lean 4 code:\n\n```lean4\n" + _lean_code(
        header, statement, informal
    )


def build_goedel_v2(header: str, statement: str, informal: str | None = None) -> list[ChatMessage]:
    code = _lean_code(header, statement, informal)
    if not code.endswith("\n"):
        code += "\n"
    user = f"Complete the following Lean 4 code:\n\n```lean4\n{code}```\n\n{LEAN_PLAN_REQUEST}"
    return [{"role": "user", "content": user}]


def build_coq(header: str, statement: str, informal: str | None = None) -> str:
    return "Complete the following Coq proof:\n\n```coq\n" + _coq_code(header, statement, informal)


def build_coq_chat(header: str, statement: str, informal: str | None = None) -> list[ChatMessage]:
    code = _coq_code(header, statement, informal)
    user = f"Complete the following Coq code:\n\n```coq\n{code}```\n\n{COQ_PLAN_REQUEST}"
    return [{"role": "user", "content": user}]


@dataclass(frozen=True)
class PromptFormat:
    name: str
    itp: str  # "lean" | "coq"
    kind: str  # "completion" | "chat"
    stop: tuple[str, ...]
    _builder: Callable[..., Prompt]
    description: str = ""

    def build(self, header: str, statement: str, informal: str | None = None) -> Prompt:
        """A string for completion formats, a list of chat messages for chat formats."""
        return self._builder(header, statement, informal)

    def extract(self, header: str, statement: str, completion_text: str) -> ExtractedProof | None:
        return _extract.extract(self.itp, self.kind, header, statement, completion_text)

    @property
    def is_chat(self) -> bool:
        return self.kind == "chat"

    def sampling(self, params: SamplingParams) -> SamplingParams:
        """``params`` with this format's stop strings added."""
        stop = tuple(dict.fromkeys((*self.stop, *params.stop)))
        return params if stop == params.stop else replace(params, stop=stop)


FORMATS: dict[str, PromptFormat] = {
    f.name: f
    for f in (
        PromptFormat(
            "deepseek-v1.5",
            "lean",
            "completion",
            ("```",),
            build_deepseek,
            "DeepSeek-Prover-V1.5 whole-proof completion",
        ),
        PromptFormat(
            "stp",
            "lean",
            "completion",
            ("```",),
            build_deepseek,
            "STP prover (DeepSeek-Prover completion family)",
        ),
        PromptFormat(
            "goedel-v2",
            "lean",
            "chat",
            (),
            build_goedel_v2,
            "Goedel-Prover-V2: proof plan then Lean 4 code (last lean4 block)",
        ),
        PromptFormat("coq", "coq", "completion", ("```",), build_coq, "Coq whole-proof completion"),
        PromptFormat(
            "coq-chat",
            "coq",
            "chat",
            (),
            build_coq_chat,
            "Coq: proof plan then code (last coq block)",
        ),
    )
}

DEFAULT_FORMAT = {"lean": "deepseek-v1.5", "coq": "coq"}


def get_format(name: str) -> PromptFormat:
    try:
        return FORMATS[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown prompt format {name!r}; choose one of {', '.join(FORMATS)}"
        ) from None


def list_formats() -> list[str]:
    return list(FORMATS)


@dataclass(frozen=True)
class Problem:
    header: str
    statement: str
    informal: str | None = None


@dataclass(frozen=True)
class Attempt:
    completion: Completion
    proof: ExtractedProof | None  # None: record the reason "no_proof_found"


def generate_proofs(
    generator: Generator,
    fmt: PromptFormat | str,
    problems: Sequence[Problem],
    params: SamplingParams,
    *,
    progress: ProgressCallback | None = None,
) -> list[list[Attempt]]:
    """Build the prompts, call ``generate`` or ``chat`` by the format's kind (with its stop
    strings), extract proofs. ``params.n`` attempts per problem, in input order."""
    f = get_format(fmt) if isinstance(fmt, str) else fmt
    prompts = [f.build(p.header, p.statement, p.informal) for p in problems]
    sp = f.sampling(params)
    if f.is_chat:
        outs = generator.chat(prompts, sp, progress=progress)  # type: ignore[arg-type]
    else:
        outs = generator.generate(prompts, sp, progress=progress)  # type: ignore[arg-type]
    return [
        [Attempt(c, f.extract(p.header, p.statement, c.text)) for c in comps]
        for p, comps in zip(problems, outs, strict=True)
    ]
