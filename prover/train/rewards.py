"""Reward functions for RL, as plain callables ``(prompts, completions, **kw) -> list[float]``
(the signature TRL's GRPOTrainer calls them with; every dataset column arrives as a keyword
argument holding one value per completion).

- :class:`VerifierReward` — the binary verifier reward. One call checks the whole batch with
  **one** ``verify_batch`` call per proof assistant on a warm pool (never a process per
  completion), and can store every rollout and its verdict as an ``Attempt``.
- :class:`OverlongPenalty` — DAPO's soft overlong punishment (0 up to ``max_len - buffer``
  tokens, then linearly down to -1 at ``max_len``).

Columns the verifier reward reads (see :mod:`prover.train.rl` for builders):
``header``, ``statement`` (trusted), ``itp`` ("coq" | "lean"), ``kind`` ("completion": the
text continues the prompt's open fence | "chat": a full answer, the last fenced block is taken),
and optionally ``mode`` ("whole-proof" | "correction"), ``statement_id``, ``name``,
``correction_round``, ``parent_attempt_id``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from verifier.types import ProofTask, Verdict

NO_PROOF = {"status": "failed", "reason": "no_proof_found", "messages": [], "axioms": [],
            "seconds": 0.0, "backend": "", "backend_version": "", "sandboxed": True}


def completion_text(completion: Any) -> str:
    """A completion as text: strings as is; a list of chat messages -> the assistant content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        parts = [m.get("content", "") for m in completion if isinstance(m, dict)
                 and m.get("role", "assistant") == "assistant"]
        return "".join(str(p) for p in parts)
    return str(completion)


def _column(kw: dict[str, Any], name: str, n: int, default: Any = None) -> list[Any]:
    v = kw.get(name)
    if v is None:
        return [default] * n
    if isinstance(v, (list, tuple)):
        if len(v) != n:
            raise ValueError(f"column {name!r} has {len(v)} values for {n} completions")
        return [default if x is None else x for x in v]
    return [v] * n


def _process_index() -> int:
    try:
        from accelerate import PartialState

        state = PartialState()
        return int(state.process_index)
    except Exception:  # noqa: BLE001 - accelerate not initialized: single process
        return int(os.environ.get("RANK", "0"))


class VerifierReward:
    """1.0 when the verifier proves the extracted proof, else 0.0 (no proof found,
    failed, timeout, rejected...).

    ``backend``: a verifier backend (``verifier.get_backend(itp, ...)``); when None one is
    created on first use per ITP with ``backend_opts`` and closed by :meth:`close`.

    Attempt storage (``db`` given): each rollout becomes an Attempt of run ``run`` with its
    verdict, key ``rl/<run id>/<phase><step>/p<process>/<index>``: deterministic per trainer step
    and rollout position, so a re-run of the same step never adds rows (the first stored
    rollout stays). Rows without ``statement_id`` get their statement upserted by
    (itp, header, statement).
    """

    __name__ = "verifier"
    is_pass_reward = True  # the dynamic-sampling filter computes pass rates from this reward

    def __init__(
        self,
        backend: Any = None,
        *,
        timeout: float = 60.0,
        backend_opts: dict[str, Any] | None = None,
        db: str | None = None,
        run: str | None = None,
        model: str | None = None,
        checkpoint_id: int | None = None,
        sampling: dict[str, Any] | None = None,
        store: bool = True,
    ) -> None:
        self._backends: dict[str, Any] = {}  # created here (and closed by close())
        self._own_backends = backend is None
        self._default_backend = backend
        self.timeout = timeout
        self.backend_opts = dict(backend_opts or {})
        self.db = db
        self.run = run
        self.model = model
        self.checkpoint_id = checkpoint_id
        self.sampling = sampling
        self.store = store and (db is not None or run is not None)
        self._run_id: int | None = None
        self.calls = 0
        self.verify_calls = 0
        self.last_verdicts: list[dict[str, Any]] = []
        self.last_keys: list[str] = []

    # ------------------------------------------------------------------ backends
    def backend_for(self, itp: str) -> Any:
        """The backend given to the constructor, else one per ITP created on first use."""
        if self._default_backend is not None:
            return self._default_backend
        itp = itp.lower()
        if itp not in self._backends:
            from verifier import get_backend

            self._backends[itp] = get_backend(itp, **self.backend_opts)
        return self._backends[itp]

    def close(self) -> None:
        if self._own_backends:
            for b in self._backends.values():
                try:
                    b.close()
                except Exception:  # noqa: BLE001, S110 - best-effort close
                    pass
        self._backends.clear()

    # ------------------------------------------------------------------ the reward
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kw: Any) -> list[float]:
        from prover.extract import extract

        n = len(completions)
        self.calls += 1
        headers = _column(kw, "header", n, "")
        statements = _column(kw, "statement", n)
        if any(s is None for s in statements):
            raise ValueError("the verifier reward needs a `statement` column (the trusted statement)")
        itps = [str(x).lower() for x in _column(kw, "itp", n, "coq")]
        kinds = _column(kw, "kind", n, "completion")
        texts = [completion_text(c) for c in completions]

        extracted = [
            extract(itp, kind, h, st, t)
            for itp, kind, h, st, t in zip(itps, kinds, headers, statements, texts)
        ]
        verdicts: list[dict[str, Any] | None] = [None if e else dict(NO_PROOF) for e in extracted]
        by_itp: dict[str, list[int]] = {}
        for i, e in enumerate(extracted):
            if e is not None:
                by_itp.setdefault(itps[i], []).append(i)
        for itp, idx in by_itp.items():
            tasks = [ProofTask(headers[i], statements[i], extracted[i].proof, id=str(i),
                               helpers=extracted[i].helpers) for i in idx]
            results: list[Verdict] = self.backend_for(itp).verify_batch(tasks, timeout=self.timeout)
            self.verify_calls += 1
            for i, v in zip(idx, results):
                verdicts[i] = v.to_dict()
        self.last_verdicts = [v for v in verdicts if v is not None]
        rewards = [1.0 if v and v["status"] == "proved" else 0.0 for v in verdicts]

        log_metric = kw.get("log_metric")
        if callable(log_metric) and n:
            log_metric("verifier/pass_rate", sum(rewards) / n)
            log_metric("verifier/no_proof_rate", sum(e is None for e in extracted) / n)

        if self.store:
            self._store(prompts, texts, extracted, verdicts, itps, headers, statements, kw)
        return rewards

    # ------------------------------------------------------------------ storage
    def _ensure_run(self, session: Any) -> int:
        if self._run_id is None:
            from db.queries import get_or_create_run

            self._run_id = get_or_create_run(session, self.run or "rl", kind="rl").id
        return self._run_id

    def _store(self, prompts, texts, extracted, verdicts, itps, headers, statements, kw) -> None:
        from db.queries import AttemptRecord, record_attempts, upsert_statement
        from db.session import session_scope
        from prover.extract import coq_theorem_name, lean_theorem_name

        n = len(texts)
        state = kw.get("trainer_state")
        step = int(getattr(state, "global_step", 0) or 0) if state is not None else self.calls - 1
        phase = "s"
        ids = _column(kw, "statement_id", n)
        names = _column(kw, "name", n)
        modes = _column(kw, "mode", n, "whole-proof")
        rounds = _column(kw, "correction_round", n, 0)
        parents = _column(kw, "parent_attempt_id", n)
        comp_ids = kw.get("completion_ids")
        proc = _process_index()
        with session_scope(self.db) as session:
            run_id = self._ensure_run(session)
            records = []
            keys = []
            for i in range(n):
                sid = ids[i]
                if sid is None:
                    name = names[i] or (coq_theorem_name(statements[i]) if itps[i] == "coq"
                                        else lean_theorem_name(statements[i])) or "rl"
                    sid = upsert_statement(session, itp=itps[i], name=name, header=headers[i],
                                           formal_statement=statements[i])[0].id
                mode = str(modes[i])
                key = f"rl/{run_id}/{phase}{step}/p{proc}/{i}"
                keys.append(key)
                e = extracted[i]
                prompt = prompts[i] if isinstance(prompts[i], str) else json.dumps(prompts[i], ensure_ascii=False)
                records.append(AttemptRecord(
                    key=key,
                    statement_id=int(sid),
                    proof=e.proof if e else None,
                    helpers=e.helpers if e else "",
                    run_id=run_id,
                    round_index=step,
                    checkpoint_id=self.checkpoint_id,
                    model=self.model,
                    mode=mode,
                    correction_round=int(rounds[i] or (1 if mode == "correction" else 0)),
                    parent_attempt_id=int(parents[i]) if parents[i] is not None else None,
                    sample_index=i,
                    prompt=prompt,
                    completion=texts[i],
                    completion_tokens=len(comp_ids[i]) if comp_ids is not None else None,
                    sampling=self.sampling,
                    verdict=verdicts[i],
                ))
            record_attempts(session, records)
        self.last_keys = keys


class OverlongPenalty:
    """DAPO's soft overlong punishment on completion length L (tokens):
    0 when L <= max_len - buffer, (max_len - buffer - L) / buffer up to max_len, -1 beyond.
    Reads ``completion_ids`` (TRL passes it); falls back to whitespace tokens of the text."""

    __name__ = "overlong_penalty"
    is_pass_reward = False

    def __init__(self, max_completion_length: int, buffer: int, factor: float = 1.0) -> None:
        if buffer < 0 or buffer >= max_completion_length:
            raise ValueError(
                f"overlong buffer must be in [0, max_completion_length={max_completion_length}), got {buffer}"
            )
        self.max_len = int(max_completion_length)
        self.buffer = int(buffer)
        self.factor = float(factor)

    def penalty(self, length: int) -> float:
        start = self.max_len - self.buffer
        if length <= start:
            return 0.0
        if length > self.max_len or self.buffer == 0:
            return -self.factor
        return self.factor * (start - length) / self.buffer

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kw: Any) -> list[float]:
        ids = kw.get("completion_ids")
        if ids is not None:
            lengths = [len(x) for x in ids]
        else:
            lengths = [len(completion_text(c).split()) for c in completions]
        return [self.penalty(n) for n in lengths]


RewardFn = Callable[..., list[float]]
