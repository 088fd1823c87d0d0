"""One interface for every way of producing proof attempts.

A :class:`Generator` turns prompts (plain strings, for completion-style prompt formats) or
conversations (lists of chat messages) into ``n`` :class:`Completion` objects each, in input
order. Backends: ``hf`` (transformers, CPU-friendly), ``openai`` (any OpenAI-compatible
server such as ``vllm serve`` or SGLang), ``vllm`` (offline engine, optional ``gpu`` extra)
and ``portfolio`` (no model: fixed decision procedures, a non-neural baseline).

Progress: every ``generate``/``chat`` accepts ``progress=callable``; it is called from the
calling thread with the number of prompts (or conversations) finished since the previous
call, so ``lambda k: bar.advance(task, k)`` drives a rich progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

ChatMessage = dict  # {"role": "system" | "user" | "assistant", "content": str}
ProgressCallback = Callable[[int], None]

BACKENDS = ("hf", "openai", "vllm", "portfolio")


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings shared by every backend. ``temperature == 0`` means greedy."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 0.95
    max_tokens: int = 1024
    seed: int | None = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if isinstance(self.stop, str):  # a lone string is a common slip: treat it as one stop
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None  # "stop" | "length" | None (unknown)


class GenerationError(RuntimeError):
    """A backend could not produce completions (bad request, server down after retries...)."""


@runtime_checkable
class Generator(Protocol):
    name: str
    model: str

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions per prompt, in input order."""
        ...

    def chat(
        self,
        conversations: Sequence[list[ChatMessage]],
        params: SamplingParams,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` assistant replies per conversation, in input order."""
        ...


FALLBACK_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def fallback_chat_prompt(conversation: Sequence[ChatMessage]) -> str:
    """A plain template for tokenizers without a chat template."""
    parts = []
    for m in conversation:
        role = FALLBACK_ROLE_NAMES.get(m["role"], str(m["role"]).capitalize())
        parts.append(f"{role}:\n{m['content']}\n\n")
    parts.append("Assistant:\n")
    return "".join(parts)


def render_chat(tokenizer: Any, conversation: Sequence[ChatMessage]) -> str:
    """A conversation as the prompt text the model continues (an open assistant turn): the
    tokenizer's chat template, else the fallback. One rendering for generation (hf, vllm) and
    training (RL rows), so a model is trained on the prompts it is sampled with."""
    if getattr(tokenizer, "chat_template", None):
        text = str(tokenizer.apply_chat_template(list(conversation), tokenize=False,
                                                 add_generation_prompt=True))
        # encoding adds BOS again: avoid a doubled BOS
        bos = getattr(tokenizer, "bos_token", None)
        if bos and text.startswith(bos):
            text = text[len(bos) :]
        return text
    return fallback_chat_prompt(conversation)


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest occurrence of any stop string (the stop string itself is
    dropped, as the OpenAI API and vLLM do). Returns the text and whether a stop matched."""
    cut = -1
    for s in stop:
        if not s:
            continue
        i = text.find(s)
        if i != -1 and (cut == -1 or i < cut):
            cut = i
    if cut == -1:
        return text, False
    return text[:cut], True


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` non-negative ints that sum to ``total`` (remainder to the
    first ones)."""
    if parts <= 0:
        return []
    q, r = divmod(max(int(total), 0), parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


def make_generator(backend: str, *, model: str | None = None, **opts: Any) -> Generator:
    """Build a generator by backend name.

    - ``hf``: ``model`` is a local path (or anything ``from_pretrained`` accepts offline);
      opts: ``device``, ``dtype``, ``batch_size``, ``trust_remote_code``.
    - ``openai``: ``model`` is the served model name (None: ask the server's ``/models``);
      opts: ``base_url``, ``api_key``, ``timeout``, ``concurrency``, ``batch_size``,
      ``max_retries``, ``backoff``, ``max_backoff``, ``extra_body``.
    - ``vllm``: ``model`` is a path or name; opts: ``tensor_parallel_size``,
      ``max_model_len``, ``dtype``, ``gpu_memory_utilization``, ``seed``,
      ``trust_remote_code``, ``chunk_size``.
    - ``portfolio``: no model; opts: ``itp`` ("lean" | "coq", default: from the prompt).

    Greedy sampling (``temperature == 0``) with ``n > 1`` returns ``n`` copies of the one
    greedy completion in every backend.
    """
    key = backend.strip().lower()
    if key == "hf":
        if not model:
            raise ValueError("the hf backend needs model=<path to a checkpoint>")
        from prover.generation.hf import HFGenerator

        return HFGenerator(model, **opts)
    if key == "openai":
        from prover.generation.openai import OpenAIGenerator

        return OpenAIGenerator(model, **opts)
    if key == "vllm":
        if not model:
            raise ValueError("the vllm backend needs model=<path or name>")
        from prover.generation.vllm import VLLMGenerator

        return VLLMGenerator(model, **opts)
    if key == "portfolio":
        from prover.generation.portfolio import PortfolioGenerator

        return PortfolioGenerator(model=model, **opts)
    raise ValueError(f"unknown generation backend {backend!r}; choose one of {', '.join(BACKENDS)}")
