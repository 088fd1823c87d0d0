"""OpenAI-compatible HTTP backend (``vllm serve``, SGLang, hosted APIs).

- ``generate`` posts to ``{base_url}/completions`` with up to ``batch_size`` prompts per request
  (the API takes a list prompt; choice ``index`` = prompt_position * n + sample).
- ``chat`` posts one conversation per request to ``{base_url}/chat/completions``.
- Requests run concurrently on a thread pool (``concurrency``); transient failures (connection
  errors, timeouts, HTTP 408/429/5xx) are retried with exponential backoff plus jitter,
  honouring ``Retry-After``; other 4xx fail at once with the server's message.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Self

import httpx

from prover.generation.base import (
    ChatMessage,
    Completion,
    GenerationError,
    ProgressCallback,
    SamplingParams,
    split_evenly,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def sampling_body(params: SamplingParams) -> dict[str, Any]:
    """The sampling fields of a request body."""
    body: dict[str, Any] = {
        # greedy decoding yields one sequence: ask for one and repeat it (some servers reject
        # n > 1 without sampling)
        "n": 1 if params.greedy else params.n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    return body


def _choice_tokens(choices: list[dict], usage: dict | None) -> list[int]:
    """Completion tokens per choice. The standard API reports only request totals in
    ``usage``; when a server adds a per-choice count we use it, otherwise the total is split
    evenly over the choices (an approximation: per-sample lengths are not reported)."""
    per = [
        (c.get("usage") or {}).get("completion_tokens", c.get("completion_tokens")) for c in choices
    ]
    if choices and all(isinstance(x, int) for x in per):
        return per  # type: ignore[return-value]
    return split_evenly((usage or {}).get("completion_tokens", 0), len(choices))


def _repeat(comps: list[Completion], n: int) -> list[Completion]:
    """Pad a greedy request's single completion up to ``n`` copies."""
    return comps if len(comps) >= n else [comps[i % len(comps)] for i in range(n)]


class OpenAIGenerator:
    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        concurrency: int = 8,
        batch_size: int = 8,
        max_retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip(
            "/"
        )
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.concurrency = max(1, int(concurrency))
        self.batch_size = max(1, int(batch_size))
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.extra_body = dict(extra_body or {})
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, limits=limits
        )
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        self.model = model or self._first_served_model()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ public API

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[list[Completion]]:
        batches = [
            list(range(i, min(i + self.batch_size, len(prompts))))
            for i in range(0, len(prompts), self.batch_size)
        ]

        def run(idx: list[int]) -> list[list[Completion]]:
            body = {
                "model": self.model,
                "prompt": [prompts[i] for i in idx],
                **sampling_body(params),
            }
            data = self._post("/completions", body)
            return [
                _repeat(cs, params.n) for cs in self._parse_completions(data, len(idx), body["n"])
            ]

        return self._run(batches, run, len(prompts), progress)

    def chat(
        self,
        conversations: Sequence[list[ChatMessage]],
        params: SamplingParams,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[list[Completion]]:
        def run(idx: list[int]) -> list[list[Completion]]:
            (i,) = idx
            body = {
                "model": self.model,
                "messages": list(conversations[i]),
                **sampling_body(params),
            }
            data = self._post("/chat/completions", body)
            return [_repeat(self._parse_chat(data, body["n"]), params.n)]

        return self._run(
            [[i] for i in range(len(conversations))], run, len(conversations), progress
        )

    # ------------------------------------------------------------------ internals

    def _run(
        self, batches, fn, total: int, progress: ProgressCallback | None
    ) -> list[list[Completion]]:
        results: list[list[Completion] | None] = [None] * total
        if not batches:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batches))) as pool:
            futures = {pool.submit(fn, idx): idx for idx in batches}
            try:
                for fut in as_completed(futures):
                    idx = futures[fut]
                    for i, comps in zip(idx, fut.result()):
                        results[i] = comps
                    if progress:
                        progress(len(idx))
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return results  # type: ignore[return-value]

    def _sleep_before_retry(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff, self.backoff * (2**attempt))
        with self._rng_lock:
            delay *= 0.5 + self._rng.random()  # jitter: spread retries of concurrent requests
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.max_backoff))
            except ValueError:
                pass
        time.sleep(delay)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, **self.extra_body}
        last: str = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                r = self._client.post(path, json=body)
            except httpx.TransportError as e:  # connection refused/reset, timeouts
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code < 400:
                    try:
                        return r.json()
                    except ValueError as e:
                        raise GenerationError(
                            f"{path}: invalid JSON from server: {r.text[:300]!r}"
                        ) from e
                last = f"HTTP {r.status_code}: {r.text[:500]}"
                if r.status_code not in RETRY_STATUS:
                    raise GenerationError(f"{self.base_url}{path} rejected the request: {last}")
                retry_after = r.headers.get("retry-after")
            if attempt < self.max_retries:
                self._sleep_before_retry(attempt, retry_after)
        raise GenerationError(
            f"{self.base_url}{path} failed after {self.max_retries + 1} attempts: {last}"
        )

    def _parse_completions(
        self, data: dict[str, Any], n_prompts: int, n: int
    ) -> list[list[Completion]]:
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != n_prompts * n:
            raise GenerationError(
                f"expected {n_prompts * n} choices, server returned {len(choices)}"
            )
        usage = data.get("usage") or {}
        # prompt tokens: the request total split over its prompts (exact with batch_size=1)
        prompt_tok = split_evenly(usage.get("prompt_tokens", 0), n_prompts)
        comp_tok = _choice_tokens(choices, usage)
        out = []
        for p in range(n_prompts):
            out.append(
                [
                    Completion(
                        choices[p * n + j].get("text") or "",
                        prompt_tok[p],
                        comp_tok[p * n + j],
                        choices[p * n + j].get("finish_reason"),
                    )
                    for j in range(n)
                ]
            )
        return out

    def _parse_chat(self, data: dict[str, Any], n: int) -> list[Completion]:
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise GenerationError(f"expected {n} choices, server returned {len(choices)}")
        usage = data.get("usage") or {}
        comp_tok = _choice_tokens(choices, usage)
        out = []
        for c, k in zip(choices, comp_tok):
            msg = c.get("message") or {}
            # servers with a reasoning parser return the thinking separately; rebuild the raw
            # output (as an offline engine would return it) so extraction sees the same text
            text = msg.get("content") or ""
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            if reasoning:
                text = f"<think>\n{reasoning}\n</think>\n\n{text}"
            out.append(
                Completion(text, int(usage.get("prompt_tokens", 0)), k, c.get("finish_reason"))
            )
        return out

    def _first_served_model(self) -> str:
        try:
            r = self._client.get("/models")
            r.raise_for_status()
            return r.json()["data"][0]["id"]
        except Exception as e:
            raise GenerationError(
                f"no model given and {self.base_url}/models did not name one ({e}); pass model=..."
            ) from e
