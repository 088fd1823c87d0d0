"""The self-play round driver (`prover selfplay --config FILE.yaml`).

A run is a sequence of rounds; a round is a sequence of steps:

    attempt → verify → conjecture → attempt conjectures → select → scaffold → assemble
    → train → evaluate

Each step reads its inputs from the database and writes its outcome back (attempt keys are
deterministic, writes are upserts), and the round's current step is stored in `rounds.step`
before the step runs. A driver killed anywhere resumes at the step it was in, and re-running
a half-done step adds nothing twice. Timings and counts of every step land in
`rounds.timings` / `rounds.counts`.

Verification goes through the warm verifier pool in process, or, with `celery: true`, fans
out to the `verify` queue in chunks (generation and training then run where the driver runs:
on a GPU node, next to vLLM).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from db import queries
from db.importer import import_benchmark
from db.models import Round, Run
from db.session import get_engine, session_scope
from prover.recipe import Recipe

STEPS = ("attempt", "verify", "conjecture", "attempt_conjectures", "select", "scaffold",
         "assemble", "train", "evaluate", "done")


@dataclass
class SelfPlayConfig(Recipe):
    """A self-play recipe (YAML). Defaults follow STP where they apply to a CPU run."""

    name: str
    itp: str = "coq"
    benchmark: str = "minif2f"
    variant: str | None = None
    train_split: str = "valid"  # the statements the prover learns on (targets and seeds)
    eval_split: str = "test"  # held out: evaluated after every round, never trained on
    limit: int | None = None  # first N train-split statements (by name)
    rounds: int = 2
    out_dir: str = "runs"
    # the model playing both roles (STP); "tiny" builds a small model from a config (CPU demos)
    model: str = "tiny"
    backend: str = "hf"
    backend_opts: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None
    # bootstrap: SFT the start model on verified portfolio proofs of the train split, as STP
    # starts from an SFT model (a random tiny model proves nothing to conjecture from)
    bootstrap: bool = True
    samples: int = 8  # per target statement (STP: 64 in round 0, 32 later)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    resample_solved: float = 0.05  # solved targets are re-attempted with this probability
    verify_timeout: float = 30.0
    verify_workers: int = 2
    celery: bool = False
    conjecture: dict[str, Any] = field(default_factory=dict)  # conjecturer.ConjectureConfig
    train: dict[str, Any] = field(default_factory=dict)  # prover.train.sft.WeightedSFTConfig
    bootstrap_train: dict[str, Any] = field(default_factory=dict)  # overrides `train`
    eval_n: int = 4
    eval_ks: tuple[int, ...] = (1, 4)
    eval_limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.eval_ks = tuple(self.eval_ks)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


@dataclass
class Context:
    cfg: SelfPlayConfig
    engine: Engine
    run_id: int
    round_index: int
    model_path: str  # the checkpoint this round samples from
    verifier_opts: dict[str, Any]
    _backend: Any = None
    _generator: Any = None

    @property
    def backend(self):
        if self._backend is None:
            from verifier import backend_from_options

            self._backend = backend_from_options(self.cfg.itp, **self.verifier_opts)
        return self._backend

    @property
    def generator(self):
        if self._generator is None:
            from prover.generation import make_generator

            self._generator = make_generator(self.cfg.backend, model=self.model_path,
                                             **self.cfg.backend_opts)
        return self._generator

    def verify(self, *, attempt_ids: list[int] | None = None) -> None:
        """Check the run's pending attempts (in process, or on the verify queue)."""
        if self.cfg.celery:
            from workers.dispatch import verify_pending_via_celery

            verify_pending_via_celery(self.engine, self.cfg.itp, run_id=self.run_id,
                                      attempt_ids=attempt_ids, timeout=self.cfg.verify_timeout,
                                      verifier_opts=self.verifier_opts)
        else:
            from prover.checking import verify_pending

            verify_pending(self.engine, self.backend, timeout=self.cfg.verify_timeout,
                           run_id=self.run_id, attempt_ids=attempt_ids)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


def conjecture_config(cfg: SelfPlayConfig):
    from conjecturer.pipeline import ConjectureConfig

    base = {"dataset": dataset_name(cfg), "split": cfg.train_split,
            "eval_splits": (cfg.eval_split,), "seed": cfg.seed,
            "verify_timeout": cfg.verify_timeout, "prover_format": cfg.prompt}
    return ConjectureConfig(**(base | cfg.conjecture))


def dataset_name(cfg: SelfPlayConfig) -> str:
    from prover.eval import EvalSpec

    return EvalSpec(benchmark=cfg.benchmark, itp=cfg.itp, variant=cfg.variant).dataset_name()


# --------------------------------------------------------------------------- the steps


def target_key(run: str, round_index: int, statement_id: int, sample: int) -> str:
    return f"{run}/r{round_index}/{statement_id}/{sample}"


def choose_targets(statement_ids: list[int], solved: set[int], *, resample_solved: float,
                   seed: int) -> list[int]:
    """STP's targets: every unsolved statement, and solved ones with a small probability."""
    rng = random.Random(seed)
    return [s for s in statement_ids if s not in solved or rng.random() < resample_solved]


def step_attempt(ctx: Context) -> dict[str, Any]:
    """The prover samples proofs of the target statements; attempts are stored unverified."""
    from prover.attempts import completion_record
    from prover.generation import SamplingParams
    from prover.prompts import DEFAULT_FORMAT, get_format

    cfg = ctx.cfg
    fmt = get_format(cfg.prompt or DEFAULT_FORMAT[cfg.itp])
    with session_scope(ctx.engine) as s:
        stmts = queries.dataset_statements(s, dataset_name(cfg), split=cfg.train_split,
                                           limit=cfg.limit)
        solved = queries.statements_with_proof(s, [st.id for st in stmts])
        targets = set(choose_targets([st.id for st in stmts], solved,
                                     resample_solved=cfg.resample_solved,
                                     seed=cfg.seed + ctx.round_index))
        have = queries.attempts_by_keys(
            s, [target_key(cfg.name, ctx.round_index, sid, i) for sid in targets
                for i in range(cfg.samples)])
    todo = [st for st in stmts if st.id in targets and any(
        target_key(cfg.name, ctx.round_index, st.id, i) not in have for i in range(cfg.samples))]
    params = SamplingParams(n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_tokens=cfg.max_tokens, seed=cfg.seed + ctx.round_index,
                            stop=fmt.stop)
    stored = 0
    for start in range(0, len(todo), 8):  # store chunk by chunk: a kill loses at most a chunk
        chunk = todo[start : start + 8]
        prompts = [fmt.build(st.header, st.formal_statement, st.informal) for st in chunk]
        outs = (ctx.generator.chat(prompts, params) if fmt.is_chat
                else ctx.generator.generate(prompts, params))
        recs = [
            completion_record(
                fmt, key=target_key(cfg.name, ctx.round_index, st.id, i), statement_id=st.id,
                header=st.header, formal_statement=st.formal_statement, prompt=prompt,
                completion=comp, params=params, model=ctx.model_path, run_id=ctx.run_id,
                round_index=ctx.round_index, sample_index=i)
            for st, prompt, comps in zip(chunk, prompts, outs)
            for i, comp in enumerate(comps)
        ]
        with session_scope(ctx.engine) as s:
            queries.record_attempts(s, recs)
        stored += len(recs)
    return {"statements": len(stmts), "solved_before": len(solved), "targets": len(targets),
            "attempts_stored": stored}


def step_verify(ctx: Context) -> dict[str, Any]:
    ctx.verify()
    with session_scope(ctx.engine) as s:
        rates = queries.pass_rates(s, run_id=ctx.run_id, round_index=ctx.round_index)
    return {"attempted": len(rates), "proved_statements": sum(1 for r in rates if r.proved),
            "attempts": sum(r.attempts for r in rates), "proved": sum(r.proved for r in rates)}


def step_conjecture(ctx: Context) -> dict[str, Any]:
    from conjecturer.pipeline import generate_conjectures

    _, counts = generate_conjectures(ctx.engine, run_id=ctx.run_id, round_index=ctx.round_index,
                                     itp=ctx.cfg.itp, generator=ctx.generator,
                                     backend=ctx.backend, config=conjecture_config(ctx.cfg))
    return {k: v for k, v in counts.items() if k != "rejected_examples"}


def step_attempt_conjectures(ctx: Context) -> dict[str, Any]:
    from conjecturer.pipeline import attempt_conjectures

    cc = conjecture_config(ctx.cfg)
    if not cc.prove:
        return {"skipped": True}
    # the conjecturer verifies in process; with Celery, verification happens in step "verify"
    # style afterwards, through the same pending-attempt path
    return attempt_conjectures(ctx.engine, run_name=ctx.cfg.name, run_id=ctx.run_id,
                               round_index=ctx.round_index, itp=ctx.cfg.itp,
                               generator=ctx.generator, backend=ctx.backend, config=cc)


def step_select(ctx: Context) -> dict[str, Any]:
    from conjecturer.pipeline import select_conjectures
    from conjecturer.relevance import hf_embedder

    embedder = hf_embedder(ctx.model_path) if Path(ctx.model_path).is_dir() else None
    _, counts = select_conjectures(ctx.engine, run_id=ctx.run_id, round_index=ctx.round_index,
                                   itp=ctx.cfg.itp, config=conjecture_config(ctx.cfg),
                                   embedder=embedder)
    return counts


def step_scaffold(ctx: Context) -> dict[str, Any]:
    from conjecturer.pipeline import scaffold_round

    cc = conjecture_config(ctx.cfg)
    if not cc.scaffold:
        return {"skipped": True}
    _, counts = scaffold_round(ctx.engine, run_id=ctx.run_id, round_index=ctx.round_index,
                               itp=ctx.cfg.itp, backend=ctx.backend, config=cc)
    return counts


def step_assemble(ctx: Context) -> dict[str, Any]:
    from conjecturer.pipeline import build_training_sets

    info = build_training_sets(ctx.engine, run_id=ctx.run_id, round_index=ctx.round_index,
                               out_dir=ctx.cfg.run_dir / "data", config=conjecture_config(ctx.cfg))
    return {role: {"rows": v["rows"], "weight_sum": round(v["weight_sum"], 4)}
            for role, v in info.items()}


def _load_training_rows(paths: list[str]):
    from datasets import concatenate_datasets, load_from_disk

    parts = [load_from_disk(p) for p in paths]
    parts = [p.select_columns(["prompt", "completion", "weight"]) for p in parts if len(p)]
    return concatenate_datasets(parts) if parts else None


def step_train(ctx: Context) -> dict[str, Any]:
    """Weighted SFT of the one model on both roles' data, from this round's checkpoint (STP);
    the new checkpoint is registered and becomes the next round's model."""
    from prover.train.sft import WeightedSFTConfig, train_sft

    with session_scope(ctx.engine) as s:
        rnd = _round(s, ctx.run_id, ctx.round_index)
        sets = (rnd.config or {}).get("training_sets", {})
    data = _load_training_rows([v["path"] for v in sets.values() if v.get("rows")])
    if data is None:
        return {"skipped": "no training data this round", "checkpoint": ctx.model_path}
    out = ctx.cfg.run_dir / f"round-{ctx.round_index}" / "model"
    tcfg = WeightedSFTConfig(output_dir=str(out), model=ctx.model_path, init="previous",
                             stage="expert-iteration", run=ctx.cfg.name,
                             round_index=ctx.round_index, seed=ctx.cfg.seed,
                             **ctx.cfg.train)
    result = train_sft(tcfg, data, db=ctx.engine.url.render_as_string(hide_password=False),
                       data_info={k: v["path"] for k, v in sets.items()})
    _set_round_config(ctx, checkpoint=str(result.path))
    ctx.model_path = str(result.path)
    ctx._generator = None
    return {"examples": len(data), "checkpoint": str(result.path),
            "checkpoint_id": result.checkpoint_id, **result.metrics}


def step_evaluate(ctx: Context) -> dict[str, Any]:
    """pass@k of this round's checkpoint on the held-out split."""
    from prover.eval import EvalSpec, in_process_checker, run_eval

    cfg = ctx.cfg
    spec = EvalSpec(benchmark=cfg.benchmark, itp=cfg.itp, variant=cfg.variant,
                    split=cfg.eval_split, backend=cfg.backend, model=ctx.model_path,
                    prompt=cfg.prompt, n=cfg.eval_n, ks=cfg.eval_ks,
                    temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                    seed=cfg.seed, timeout=cfg.verify_timeout, limit=cfg.eval_limit,
                    backend_opts=cfg.backend_opts)
    if cfg.celery:
        from workers.dispatch import celery_checker

        checker = celery_checker(cfg.itp, cfg.verify_timeout, ctx.verifier_opts)
    else:
        checker = in_process_checker(ctx.backend, cfg.verify_timeout)
    result = run_eval(spec, db=ctx.engine, checker=checker, generator=ctx.generator)
    metrics = {f"pass@{p['k']}": round(p["value"], 4) for p in result.passk}
    with session_scope(ctx.engine) as s:
        queries.register_checkpoint(s, path=str(Path(ctx.model_path).resolve()),
                                    stage="expert-iteration",
                                    metrics={f"{cfg.eval_split}_{k}": v for k, v in metrics.items()})
    return {"eval_run": result.run_name, **metrics}


STEP_FUNCS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "attempt": step_attempt, "verify": step_verify, "conjecture": step_conjecture,
    "attempt_conjectures": step_attempt_conjectures, "select": step_select,
    "scaffold": step_scaffold, "assemble": step_assemble, "train": step_train,
    "evaluate": step_evaluate,
}


# --------------------------------------------------------------------------- the driver


def _round(session, run_id: int, index: int) -> Round:
    run = session.get(Run, run_id)
    return queries.get_or_create_round(session, run, index)


def _set_round_config(ctx: Context, **values: Any) -> None:
    with session_scope(ctx.engine) as s:
        rnd = _round(s, ctx.run_id, ctx.round_index)
        rnd.config = {**(rnd.config or {}), **values}


def _record_step(engine: Engine, run_id: int, index: int, step: str, *, next_step: str,
                 counts: dict[str, Any] | None = None, seconds: float | None = None) -> None:
    import datetime as dt

    with session_scope(engine) as s:
        rnd = _round(s, run_id, index)
        if counts is not None:
            rnd.counts = {**(rnd.counts or {}), step: counts}
        if seconds is not None:
            rnd.timings = {**(rnd.timings or {}), f"{step}_s": round(seconds, 3)}
        rnd.step = next_step
        if next_step == "done":
            rnd.finished_at = dt.datetime.now(dt.UTC)


def prepare_model(cfg: SelfPlayConfig, engine: Engine, run_id: int,
                  log: Callable[[str], None]) -> str:
    """The start checkpoint: a given path, or a tiny model built from a config; optionally
    SFT'd on verified portfolio proofs of the train split (recorded as run state)."""
    with session_scope(engine) as s:
        state = dict(s.get(Run, run_id).config.get("state", {}))
    if state.get("start_model"):
        return state["start_model"]
    model = cfg.model
    if model == "tiny":
        from prover.tiny import build_tiny_model

        path = cfg.run_dir / "base"
        if not (path / "config.json").exists():
            with session_scope(engine) as s:
                stmts = queries.dataset_statements(s, dataset_name(cfg))
            corpus = [st.header + st.formal_statement for st in stmts]
            build_tiny_model(path, corpus=corpus, seed=cfg.seed)
            log(f"built a tiny model at {path}")
        model = str(path)
    if cfg.bootstrap:
        model = _bootstrap(cfg, engine, model, log)
    with session_scope(engine) as s:
        run = s.get(Run, run_id)
        run.config = {**run.config, "state": {**state, "start_model": model}}
    return model


def _bootstrap(cfg: SelfPlayConfig, engine: Engine, model: str, log) -> str:
    from conjecturer import store
    from conjecturer.dataset import prover_examples
    from prover.eval import EvalSpec, in_process_checker, run_eval
    from prover.train.sft import WeightedSFTConfig, train_sft
    from verifier import backend_from_options

    out = cfg.run_dir / "bootstrap" / "model"
    if (out / "config.json").exists():
        return str(out)
    # one tactic per sample: short verified proofs are what a small model can learn from
    spec = EvalSpec(benchmark=cfg.benchmark, itp=cfg.itp, variant=cfg.variant,
                    split=cfg.train_split, backend="portfolio", prompt=cfg.prompt, n=6,
                    timeout=cfg.verify_timeout, limit=cfg.limit,
                    backend_opts={"single": True})
    backend = backend_from_options(cfg.itp, workers=cfg.verify_workers)
    try:
        result = run_eval(spec, db=engine, checker=in_process_checker(backend, cfg.verify_timeout))
    finally:
        backend.close()
    with session_scope(engine) as s:
        proofs = store.correct_proofs(s, run_id=result.run_id)
    examples = prover_examples(proofs, {p.statement_id: 0.0 for p in proofs},
                               prompt_format=cfg.prompt, max_pass_rate=1.0)
    log(f"bootstrap: {len(examples)} verified portfolio proofs of {cfg.train_split}")
    if not examples:
        return model
    rows = [{"prompt": e.prompt, "completion": e.completion, "weight": 1.0} for e in examples]
    rows += bootstrap_conjecture_rows(cfg.itp, proofs)
    tcfg = WeightedSFTConfig(output_dir=str(out), model=model, init="previous", stage="sft",
                             run=cfg.name, seed=cfg.seed, **(cfg.train | cfg.bootstrap_train))
    train_sft(tcfg, rows, db=engine.url.render_as_string(hide_password=False),
              data_info={"bootstrap_eval_run": result.run_name})
    return str(out)


def bootstrap_conjecture_rows(itp: str, proofs) -> list[dict[str, Any]]:
    """The conjecturer's format taught by example: each solved statement (with its proof) as
    the easy theorem, the next solved statement as the hard one. One model plays both roles."""
    from conjecturer.prompts import conjecture_completion, conjecture_prompt

    first: dict[int, Any] = {}
    for p in proofs:
        first.setdefault(p.statement_id, p)
    solved = list(first.values())
    return [
        {"prompt": conjecture_prompt(itp, "", a.formal_statement, a.proof),
         "completion": conjecture_completion(b.formal_statement), "weight": 1.0}
        for a, b in zip(solved, solved[1:] + solved[:1])
    ] if len(solved) > 1 else []


def _fault_point(step: str) -> None:
    """Fault injection for the resume tests: PROVER_FAULT_INJECT=kill-after:<step> SIGKILLs
    the driver after the step's work is done but before it is recorded as done, the worst
    moment for bookkeeping (the restarted driver redoes the step)."""
    import os
    import signal

    if os.environ.get("PROVER_FAULT_INJECT") == f"kill-after:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def run_selfplay(
    cfg: SelfPlayConfig,
    *,
    db: str | Engine | None = None,
    rounds: int | None = None,
    resume: bool = True,
    log: Callable[[str], None] = print,
    stop_after: str | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) the rounds of `cfg`. `stop_after` (a step name) ends the driver after
    that step of the first round that runs it — for tests that simulate a kill."""
    engine = db if isinstance(db, Engine) else get_engine(db)
    verifier_opts = {"workers": cfg.verify_workers}
    with session_scope(engine) as s:
        if queries.latest_dataset(s, dataset_name(cfg)) is None:
            import_benchmark(s, cfg.benchmark, itp=cfg.itp, variant=cfg.variant)
        existing = s.scalars(select(Run).where(Run.name == cfg.name)).one_or_none()
        if existing is not None and not resume:
            raise ValueError(f"run {cfg.name!r} exists; pass --resume to continue it")
        run = queries.get_or_create_run(s, cfg.name, kind="selfplay",
                                        config={"recipe": dataclasses.asdict(cfg)})
        run_id = run.id
    model = prepare_model(cfg, engine, run_id, log)
    summaries = []
    for index in range(rounds if rounds is not None else cfg.rounds):
        with session_scope(engine) as s:
            rnd = _round(s, run_id, index)
            step, rconfig = rnd.step, dict(rnd.config or {})
            if not rconfig.get("model"):
                rnd.config = {**rconfig, "model": model}
                rconfig["model"] = model
        ctx = Context(cfg, engine, run_id, index, rconfig.get("checkpoint") or rconfig["model"],
                      verifier_opts)
        if step == "start":
            step = STEPS[0]
        try:
            while step != "done":
                nxt = STEPS[STEPS.index(step) + 1]
                log(f"round {index}: {step}")
                _record_step(engine, run_id, index, step, next_step=step)
                t0 = time.perf_counter()
                counts = STEP_FUNCS[step](ctx)
                _fault_point(step)
                _record_step(engine, run_id, index, step, next_step=nxt, counts=counts,
                             seconds=time.perf_counter() - t0)
                if stop_after == step:
                    return summaries
                step = nxt
        finally:
            ctx.close()
        with session_scope(engine) as s:
            rnd = _round(s, run_id, index)
            summaries.append({"round": index, "counts": rnd.counts, "timings": rnd.timings})
            model = (rnd.config or {}).get("checkpoint") or model
    with session_scope(engine) as s:
        run = s.get(Run, run_id)
        run.status = "finished"
    return summaries
