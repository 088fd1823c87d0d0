"""Offline vLLM backend (``pip install 'selfplay-prover[gpu]'``). vLLM is imported only when a
:class:`VLLMGenerator` is created; the mapping helpers below are pure and tested without it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from prover.generation.base import (
    ChatMessage,
    Completion,
    ProgressCallback,
    SamplingParams,
    render_chat,
)

INSTALL_HINT = (
    "the vllm backend needs vLLM, which is not installed: install the gpu extra "
    "(pip install 'selfplay-prover[gpu]') on a machine with a supported GPU, or use the "
    "openai backend against a `vllm serve` endpoint, or the hf backend on CPU"
)


def llm_kwargs(
    model: str,
    *,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    dtype: str = "auto",
    gpu_memory_utilization: float = 0.9,
    seed: int = 0,
    trust_remote_code: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` (unset options are left to vLLM's defaults)."""
    kw: dict[str, Any] = {
        "model": model,
        "tensor_parallel_size": int(tensor_parallel_size),
        "dtype": dtype,
        "gpu_memory_utilization": float(gpu_memory_utilization),
        "seed": int(seed),
        "trust_remote_code": bool(trust_remote_code),
    }
    if max_model_len is not None:
        kw["max_model_len"] = int(max_model_len)
    kw.update({k: v for k, v in extra.items() if v is not None})
    return kw


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams``. The stop strings are dropped from the
    output (vLLM's default), as in the other backends."""
    kw: dict[str, Any] = {
        # greedy decoding yields one sequence (vLLM rejects n > 1 without sampling): ask for one
        # and repeat it, see to_completions
        "n": 1 if params.greedy else params.n,
        "temperature": params.temperature,
        "top_p": 1.0 if params.greedy else params.top_p,
        "max_tokens": params.max_tokens,
        "seed": params.seed,
    }
    if params.stop:
        kw["stop"] = list(params.stop)
    return kw


def to_completions(outputs: Iterable[Any], n: int = 1) -> list[list[Completion]]:
    """``vllm.RequestOutput`` objects (prompt order) to completions; a request that returned
    fewer than ``n`` outputs (greedy) has them repeated up to ``n``."""
    result = []
    for req in outputs:
        prompt_tokens = len(req.prompt_token_ids or [])
        comps = [
            Completion(o.text, prompt_tokens, len(o.token_ids or []), o.finish_reason)
            for o in sorted(req.outputs, key=lambda o: o.index)
        ]
        if comps and len(comps) < n:
            comps = [comps[i % len(comps)] for i in range(n)]
        result.append(comps)
    return result


class VLLMGenerator:
    name = "vllm"

    def __init__(self, model: str, *, chunk_size: int = 1024, **engine_opts: Any) -> None:
        try:
            import vllm
        except ImportError as e:
            raise ImportError(INSTALL_HINT) from e
        self._vllm = vllm
        self.model = str(model)
        self.chunk_size = max(1, int(chunk_size))
        self.llm = vllm.LLM(**llm_kwargs(self.model, **engine_opts))

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[list[Completion]]:
        sp = self._vllm.SamplingParams(**sampling_kwargs(params))
        out: list[list[Completion]] = []
        # chunks only so that progress can move; each chunk is still batched by the engine
        step = self.chunk_size if progress else max(len(prompts), 1)
        for i in range(0, len(prompts), step):
            chunk = list(prompts[i : i + step])
            out.extend(to_completions(self.llm.generate(chunk, sp, use_tqdm=False), params.n))
            if progress:
                progress(len(chunk))
        return out

    def chat(
        self,
        conversations: Sequence[list[ChatMessage]],
        params: SamplingParams,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[list[Completion]]:
        tok = self.llm.get_tokenizer()
        prompts = [render_chat(tok, c) for c in conversations]
        return self.generate(prompts, params, progress=progress)
