"""transformers backend: local checkpoints, CPU by default. Slow but dependency-light; meant for
tests, CPU demos and small models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prover.generation.base import (
    ChatMessage,
    Completion,
    ProgressCallback,
    SamplingParams,
    apply_stop,
    render_chat,
)


class HFGenerator:
    name = "hf"

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int = 8,
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = str(model)
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.model, trust_remote_code=trust_remote_code
        )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if dtype:
            value = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
            # transformers >= 4.56 calls it `dtype`; older releases only know `torch_dtype`
            major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
            kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = value
        lm = AutoModelForCausalLM.from_pretrained(self.model, **kwargs)
        self.lm = lm.to(device)  # type: ignore[arg-type]
        self.lm.eval()
        eos = self.lm.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}

    # ------------------------------------------------------------------ public API

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[list[Completion]]:
        out: list[list[Completion]] = []
        for b in range(0, len(prompts), self.batch_size):
            batch = list(prompts[b : b + self.batch_size])
            # seed per batch from (seed, batch start): same call, same outputs, independent of
            # what ran before; the global torch RNG is left untouched
            batch_seed = None if params.seed is None else params.seed * 1_000_003 + b
            out.extend(self._generate_batch(batch, params, batch_seed))
            if progress:
                progress(len(batch))
        return out

    def chat(
        self,
        conversations: Sequence[list[ChatMessage]],
        params: SamplingParams,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[list[Completion]]:
        return self.generate(
            [self.render_chat(c) for c in conversations], params, progress=progress
        )

    def render_chat(self, conversation: Sequence[ChatMessage]) -> str:
        return render_chat(self.tokenizer, conversation)

    # ------------------------------------------------------------------ internals

    def _generate_batch(
        self, prompts: list[str], params: SamplingParams, seed: int | None
    ) -> list[list[Completion]]:
        import torch

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        width = enc["input_ids"].shape[1]
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if params.stop:
            # stop decoding a sequence once it emits a stop string (the text is still cut
            # post hoc below); without this every sample runs to max_tokens
            gen_kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if params.greedy:
            # greedy decoding cannot return several distinct sequences: decode once, repeat
            gen_kwargs.update(do_sample=False, num_return_sequences=1)
            reps = 1
        else:
            gen_kwargs.update(
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=0,
                num_return_sequences=params.n,
            )
            reps = params.n
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            seqs = self.lm.generate(**enc, **gen_kwargs)
        new = seqs[:, width:].tolist()
        results: list[list[Completion]] = []
        for i, _ in enumerate(prompts):
            comps = []
            for j in range(reps):
                ids = new[i * reps + j]
                comps.append(self._completion(ids, int(prompt_lens[i]), params))
            if reps == 1 and params.n > 1:
                comps = comps * params.n
            results.append(comps)
        return results

    def _completion(self, ids: list[int], prompt_tokens: int, params: SamplingParams) -> Completion:
        used = len(ids)
        finish = "length"
        for k, t in enumerate(ids):
            if t in self._eos_ids:
                used, finish = k + 1, "stop"
                break
        text = str(self.tokenizer.decode(ids[:used], skip_special_tokens=True))
        text, hit = apply_stop(text, params.stop)
        if hit:
            finish = "stop"
            # tokens needed to reach the stop string (re-encoded; exact for byte-level BPE
            # up to merges across the cut)
            kept = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            used = min(used, kept + 1)
        return Completion(text, prompt_tokens, used, finish)
