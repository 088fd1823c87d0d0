"""`prover eval BENCH`: sample whole proofs, check every one, report pass@k.

Resumable by construction: every attempt has a deterministic key (run, statement, sample,
correction round), attempts are stored as soon as they are generated and verdicts as soon as
they are checked, so a re-run after an interruption regenerates and re-verifies nothing that is
already stored. Self-correction rounds (Goedel-Prover-V2) extend failed chains of still-unsolved
problems; pass@k then counts chains (a chain succeeds if any of its rounds does).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from db import queries
from db.importer import BENCHMARKS, DEFAULT_VARIANT, Benchmark, import_benchmark
from db.session import get_engine, session_scope
from prover.attempts import completion_record
from prover.correction import attempt_code, correction_conversation
from prover.generation.base import Completion, Generator, SamplingParams, make_generator
from prover.passk import estimate_pass_at_k
from prover.prompts import DEFAULT_FORMAT, PromptFormat, get_format
from verifier.types import Backend, Message


@dataclass
class EvalSpec:
    """Everything that determines an evaluation's results (and so its run name)."""

    benchmark: str = "minif2f"
    itp: str = "coq"
    variant: str | None = None
    split: str = "test"
    backend: str = "portfolio"
    model: str | None = None
    prompt: str | None = None
    n: int = 1
    ks: tuple[int, ...] = (1,)
    rounds: int = 0
    temperature: float = 1.0
    top_p: float = 0.95
    max_tokens: int = 1024
    seed: int = 0
    timeout: float = 60.0
    limit: int | None = None
    backend_opts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ks = tuple(sorted(set(self.ks)))
        if self.prompt is None:
            self.prompt = DEFAULT_FORMAT[self.itp]
        bad = [k for k in self.ks if k > self.n or k < 1]
        if bad:
            raise ValueError(f"-k {bad}: every k must be between 1 and n = {self.n}")

    def named_benchmark(self) -> Benchmark | None:
        """The pinned benchmark file this spec names, or None for an imported dataset name."""
        variant = self.variant or DEFAULT_VARIANT.get((self.benchmark, self.itp), "")
        return BENCHMARKS.get((self.benchmark, self.itp, variant))

    def dataset_name(self) -> str:
        bench = self.named_benchmark()
        return bench.name if bench else self.benchmark

    def sampling(self) -> SamplingParams:
        fmt = get_format(self.prompt or DEFAULT_FORMAT[self.itp])
        return SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens, seed=self.seed, stop=fmt.stop)

    def config(self) -> dict[str, Any]:
        """The spec as stored with the run (secrets redacted)."""
        d = dataclasses.asdict(self)
        if "api_key" in d["backend_opts"]:
            d["backend_opts"]["api_key"] = "***"
        return d

    def run_name(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("ks")  # reporting only
        # how the generator is reached does not change the results: a server restarted on
        # another port (or with another key) resumes the same run
        d["backend_opts"] = {k: v for k, v in d["backend_opts"].items()
                             if k not in TRANSPORT_OPTS}
        digest = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()
        model = (self.model or self.backend).rstrip("/").rsplit("/", 1)[-1]
        return f"eval-{self.dataset_name()}-{self.split}-{model}-{digest[:10]}"


TRANSPORT_OPTS = frozenset({"base_url", "api_key", "timeout", "concurrency", "max_retries",
                            "backoff", "max_backoff"})


def attempt_key(run: str, statement_id: int, sample: int, round_: int) -> str:
    return f"{run}/{statement_id}/{sample}/r{round_}"


@dataclass
class EvalResult:
    spec: EvalSpec
    run_name: str
    run_id: int
    dataset: dict[str, Any]
    problems: list[dict[str, Any]]
    passk: list[dict[str, Any]]
    timings: dict[str, float]
    verifier: dict[str, Any]
    model: str
    counts: dict[str, int]


Progress = Callable[[str, int, int], None]  # (phase, done, total)


def _generate(generator: Generator, fmt: PromptFormat, prompts: Sequence[Any],
              params: SamplingParams) -> list[list[Completion]]:
    if fmt.is_chat:
        return generator.chat(prompts, params)
    return generator.generate(prompts, params)


def _records_for(
    run_name: str, run_id: int, fmt: PromptFormat, stmt: queries.StatementRecord,
    prompt: Any, completions: Sequence[Completion], params: SamplingParams, model: str,
    *, round_: int, samples: Sequence[int], parents: Sequence[int | None],
) -> list[queries.AttemptRecord]:
    return [
        completion_record(
            fmt, key=attempt_key(run_name, stmt.id, sample, round_), statement_id=stmt.id,
            header=stmt.header, formal_statement=stmt.formal_statement, prompt=prompt,
            completion=comp, params=params, model=model, run_id=run_id,
            mode="correction" if round_ else "whole-proof", correction_round=round_,
            parent_attempt_id=parent, sample_index=sample,
        )
        for sample, parent, comp in zip(samples, parents, completions)
    ]


# Verifies the run's pending attempts and stores their verdicts: (engine, run_id, progress).
# A checker may also carry `describe() -> {"backend", "version", "sandboxed"}`: the report
# names the verifier from it when no verdict of the run came from the verifier.
Checker = Callable[[Engine, int, Callable[[int, int], None]], None]


def describe_backend(backend: Backend) -> dict[str, Any]:
    sandbox = getattr(backend, "sandbox", None)
    return {"backend": backend.name, "version": backend.version(),
            "sandboxed": bool(getattr(sandbox, "enabled", True))}


def in_process_checker(backend: Backend, timeout: float) -> Checker:
    from prover.checking import verify_pending

    def check(engine: Engine, run_id: int, progress: Callable[[int, int], None]) -> None:
        verify_pending(engine, backend, timeout=timeout, run_id=run_id, progress=progress)

    check.describe = lambda: describe_backend(backend)  # type: ignore[attr-defined]
    return check


def _no_proof_message(itp: str) -> Message:
    """What a correction turn quotes for an answer with no extractable proof."""
    fence = "lean4" if itp == "lean" else "coq"
    return Message("error", "no proof found: the answer has no complete proof of the theorem "
                   f"(write the theorem and its whole proof in one ```{fence} block)",
                   line=None, in_proof=False)


def _check_counts(outs: Sequence[Sequence[Completion]], prompts: int, n: int) -> None:
    if len(outs) != prompts or any(len(c) < n for c in outs):
        got = [len(c) for c in outs]
        raise RuntimeError(f"the generator returned {got} completions for {prompts} prompts "
                           f"(expected {n} each)")


def run_eval(
    spec: EvalSpec,
    *,
    db: str | Engine | None = None,
    checker: Checker,
    generator: Generator | None = None,
    progress: Progress | None = None,
    gen_chunk: int = 8,
) -> EvalResult:
    """Run (or resume) an evaluation; returns the figures the report prints. `checker`
    verifies pending attempts (in process, or through Celery workers)."""
    engine = db if isinstance(db, Engine) else get_engine(db)
    fmt = get_format(spec.prompt or DEFAULT_FORMAT[spec.itp])
    if fmt.itp != spec.itp:
        raise ValueError(f"prompt format {fmt.name!r} is for {fmt.itp}, not {spec.itp}")
    params = spec.sampling()
    run_name = spec.run_name()
    t_start = time.perf_counter()
    timings = {"generate_s": 0.0, "verify_s": 0.0}

    with session_scope(engine) as s:
        bench = spec.named_benchmark()
        if queries.latest_dataset(s, spec.dataset_name()) is None and bench is not None:
            import_benchmark(s, spec.benchmark, itp=spec.itp, variant=spec.variant)
        ds = queries.latest_dataset(s, spec.dataset_name())
        if ds is None:
            raise LookupError(f"dataset {spec.dataset_name()!r} is not imported")
        dataset = {"name": ds.name, "version": ds.version, "source": ds.source,
                   "file": bench.relpath if bench and bench.name == ds.name else ds.source}
        statements = queries.dataset_statements(s, ds.name, split=spec.split, limit=spec.limit)
        if not statements:
            raise LookupError(f"dataset {ds.name!r} has no statements in split {spec.split!r}")
        run = queries.get_or_create_run(s, run_name, kind="eval",
                                        config=spec.config() | {"dataset": dataset})
        run_id = run.id

    if generator is None:
        opts = dict(spec.backend_opts)
        if spec.backend == "portfolio":
            opts.setdefault("itp", spec.itp)
        generator = make_generator(spec.backend, model=spec.model, **opts)
    model_name = getattr(generator, "model", None) or spec.model or spec.backend

    def report(phase: str, done: int, total: int) -> None:
        if progress:
            progress(phase, done, total)

    # Round 0: whole-proof samples, generated chunk by chunk and stored at once.
    with session_scope(engine) as s:
        have = queries.attempts_by_keys(
            s, [attempt_key(run_name, st.id, i, 0) for st in statements for i in range(spec.n)]
        )
    done = sum(all(attempt_key(run_name, st.id, i, 0) in have for i in range(spec.n))
               for st in statements)
    report("generate", done, len(statements))
    # Chunks have fixed boundaries in the statement list (a chunk is stored in one
    # transaction): a resumed run skips stored chunks and batches the rest exactly as an
    # uninterrupted run would, so samplers seeded per batch give the same samples.
    for start in range(0, len(statements), gen_chunk):
        chunk = statements[start : start + gen_chunk]
        if all(attempt_key(run_name, st.id, i, 0) in have for st in chunk for i in range(spec.n)):
            continue
        prompts = [fmt.build(st.header, st.formal_statement, st.informal) for st in chunk]
        t0 = time.perf_counter()
        outs = _generate(generator, fmt, prompts, params)
        timings["generate_s"] += time.perf_counter() - t0
        _check_counts(outs, len(chunk), spec.n)
        recs = []
        for st, prompt, comps in zip(chunk, prompts, outs):
            recs += _records_for(run_name, run_id, fmt, st, prompt, comps, params, model_name,
                                 round_=0, samples=range(spec.n), parents=[None] * spec.n)
        with session_scope(engine) as s:
            queries.record_attempts(s, recs)
        done += sum(not all(attempt_key(run_name, st.id, i, 0) in have for i in range(spec.n))
                    for st in chunk)
        report("generate", done, len(statements))

    def verify() -> None:
        t0 = time.perf_counter()
        checker(engine, run_id, lambda d, t: report("verify", d, t))
        timings["verify_s"] += time.perf_counter() - t0

    verify()

    # Correction rounds: extend each failed chain of a still-unsolved problem by one turn.
    by_stmt = {st.id: st for st in statements}
    corr_params = dataclasses.replace(params, n=1, stop=())
    for round_ in range(1, spec.rounds + 1):
        with session_scope(engine) as s:
            views = queries.attempts_of_run(s, run_id)
        # "still unsolved" is judged on this run's own verdicts, never on other runs'
        solved = {v.statement_id for v in views if v.status == "proved"}
        last = {(v.statement_id, v.sample_index): v for v in views
                if v.correction_round == round_ - 1}
        existing = {v.key for v in views if v.correction_round == round_}
        jobs = [v for (sid, _), v in sorted(last.items())
                if sid in by_stmt and sid not in solved and v.status not in (None, "proved")]
        report(f"correct r{round_}", 0, len(jobs))
        for start in range(0, len(jobs), gen_chunk):
            chunk = jobs[start : start + gen_chunk]
            if all(attempt_key(run_name, v.statement_id, v.sample_index, round_) in existing
                   for v in chunk):
                continue
            convs = []
            for v in chunk:
                st = by_stmt[v.statement_id]
                code, offset = attempt_code(st.formal_statement, v.proof or "", header=st.header,
                                            helpers=v.helpers)
                original = fmt.build(st.header, st.formal_statement, st.informal)
                errors = ([Message(**m) for m in v.messages] if v.proof is not None
                          else [_no_proof_message(spec.itp)])
                convs.append(correction_conversation(original, v.completion or "", errors,
                                                     code=code, proof_line_offset=offset,
                                                     itp=spec.itp))
            t0 = time.perf_counter()
            outs = generator.chat(convs, corr_params)
            timings["generate_s"] += time.perf_counter() - t0
            _check_counts(outs, len(chunk), 1)
            recs = []
            chat_fmt = fmt if fmt.is_chat else get_format("goedel-v2" if spec.itp == "lean" else "coq-chat")
            for v, conv, comps in zip(chunk, convs, outs):
                recs += _records_for(run_name, run_id, chat_fmt, by_stmt[v.statement_id], conv,
                                     comps[:1], corr_params, model_name, round_=round_,
                                     samples=[v.sample_index], parents=[v.id])
            with session_scope(engine) as s:
                queries.record_attempts(s, recs)
            report(f"correct r{round_}", min(start + gen_chunk, len(jobs)), len(jobs))
        verify()

    describe = getattr(checker, "describe", None)
    return summarize(engine, spec, run_name, run_id, dataset, model_name, statements,
                     timings | {"wall_s": time.perf_counter() - t_start},
                     verifier_info=describe() if describe else None)


def chain_outcomes(views: Sequence[queries.AttemptView]) -> dict[int, dict[int, bool]]:
    """statement id -> sample index -> whether any round of that chain was proved."""
    out: dict[int, dict[int, bool]] = {}
    for v in views:
        chains = out.setdefault(v.statement_id, {})
        chains[v.sample_index] = chains.get(v.sample_index, False) or v.status == "proved"
    return out


def summarize(
    engine: Engine, spec: EvalSpec, run_name: str, run_id: int, dataset: dict[str, Any],
    model_name: str, statements: Sequence[queries.StatementRecord],
    timings: dict[str, float], *, verifier_info: dict[str, Any] | None = None,
) -> EvalResult:
    with session_scope(engine) as s:
        views = queries.attempts_of_run(s, run_id)
        versions = queries.verifier_versions(s, run_id)
    outcomes = chain_outcomes(views)
    proofs: dict[int, queries.AttemptView] = {}
    status_counts: dict[str, int] = {}
    for v in views:
        status_counts[v.status or "unverified"] = status_counts.get(v.status or "unverified", 0) + 1
        if v.reason == "no_proof_found":
            status_counts["no_proof_found"] = status_counts.get("no_proof_found", 0) + 1
        if v.status == "proved" and v.statement_id not in proofs:
            proofs[v.statement_id] = v
    problems = []
    for st in statements:
        chains = outcomes.get(st.id, {})
        shown = proofs.get(st.id)
        problem = {"name": st.name, "statement_id": st.id, "n": len(chains),
                   "c": sum(chains.values()), "proof": shown.proof if shown else None}
        if shown is not None and shown.helpers:
            problem["helpers"] = shown.helpers  # checked between the header and the statement
        problems.append(problem)
    pairs = [(p["n"], p["c"]) for p in problems]
    passk = []
    for k in spec.ks:
        est = estimate_pass_at_k(pairs, k, seed=spec.seed)
        passk.append({"k": k, "value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
                      "problems": est.problems})
    # Read from the stored verdicts: what actually checked these proofs.
    info = verifier_info or {}
    verifier = {
        "backend": ", ".join(sorted({b for b, _, _ in versions})) or info.get("backend", spec.itp),
        "version": ", ".join(sorted({v for _, v, _ in versions})) or info.get("version", "n/a"),
        "sandboxed": (all(sb for _, _, sb in versions) if versions
                      else info.get("sandboxed", True)),
        "timeout_s": spec.timeout,
    }
    return EvalResult(spec, run_name, run_id, dataset, problems, passk, timings, verifier,
                      model_name, status_counts | {"attempts": len(views)})
