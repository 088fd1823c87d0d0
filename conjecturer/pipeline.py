"""One conjecture round, end to end, as library calls a self-play driver composes.

:func:`run_conjecture_round` runs every step in order; each step is also a function of its
own (the Celery canvas can run them as separate tasks), and each reads its inputs from the
database and writes its outcome back, so a killed round resumes where it stopped:

1. :func:`generate_conjectures` — seeds (solved statements, a proof, a lemma), the conjecture
   prompt, sampling, parsing; dedup, validity check (``backend.check_statement``),
   decontamination; survivors stored as statements of origin ``conjecture`` with their links.
   Skipped when the round already has conjectures.
2. :func:`attempt_conjectures` — the prover samples proofs of the round's conjectures (prompt
   format of the ITP, STP sampling: temperature 1, top-p 1) and the verifier checks them;
   attempts carry the run and round, keys are deterministic (already stored ones are skipped).
3. :func:`select_conjectures` — barely provable (>= 1 proof, pass rate <= 0.25, >= 8 attempts),
   elegance, relevance re-weighting against the still-unsolved targets; ``selected`` and
   ``weight`` written to the conjecture rows.
4. :func:`scaffold_round` — sub-goals (and negations) of failed attempts of unsolved
   statements, checked and stored (origin ``scaffold-*``).
5. :func:`build_training_sets` — prover and conjecturer examples, saved as HF datasets, their
   paths and sizes recorded in ``rounds.config['training_sets']``.

The funnel counts of every step land in ``rounds.counts['conjecturer']``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from conjecturer import store
from conjecturer.dataset import conjecturer_examples, prover_examples, write_dataset
from conjecturer.filters import (
    Candidate,
    barely_provable,
    check_validity,
    decontaminate,
    dedup,
    elegance,
)
from conjecturer.prompts import HARD_END, conjecture_prompt, parse_conjecture
from conjecturer.relevance import Embedder, hf_embedder, reweight
from conjecturer.scaffold import SUBGOAL, extract_scaffolds, filter_scaffolds
from conjecturer.seeds import coq_lemma_resolver, select_seeds
from db import queries
from db.models import Origin
from db.session import get_engine, session_scope


@dataclass
class ConjectureConfig:
    """Defaults are STP's (and Goedel-Prover-V2's for scaffolding)."""

    # where seeds and targets come from (None: every benchmark statement of the ITP)
    dataset: str | None = None
    split: str | None = None
    eval_splits: tuple[str, ...] = ("test",)
    # seeds
    conjecture_threshold: float = 0.25  # barely provable: pass rate <= this
    seed_margin: float = 0.1  # seeds: best pass rate > threshold + margin
    empty_lemma_prob: float = 0.5
    lemma_cap_fraction: float = 0.1
    seeds_per_statement: int = 1
    max_seeds: int | None = None
    seed: int = 0
    # conjecture sampling
    conjectures_per_seed: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    # checks
    check_timeout: float = 30.0
    ngram_n: int = 10
    ngram_threshold: float | None = None
    # prover attempts at conjectures
    prove: bool = True
    prove_samples: int = 32
    prover_format: str | None = None
    prove_max_tokens: int = 1024
    prove_temperature: float = 1.0
    prove_top_p: float = 1.0
    verify_timeout: float = 60.0
    # selection
    min_attempts: int = 8
    elegance_drop: float = 0.2
    relevance_top_k: int = 4
    relevance_cap: float = 4.0
    # training sets
    prover_max_pass_rate: float = 0.5
    proofs_per_statement: int = 16
    length_coef: float = 0.001
    # scaffolding
    scaffold: bool = True
    scaffold_per_statement: int = 2
    scaffold_max_attempts: int = 64
    scaffold_timeout: float = 20.0

    @property
    def seed_threshold(self) -> float:
        return self.conjecture_threshold + self.seed_margin


@dataclass
class RoundReport:
    run_id: int
    round_index: int
    counts: dict[str, Any] = field(default_factory=dict)
    conjecture_ids: list[int] = field(default_factory=list)
    selected: dict[int, float] = field(default_factory=dict)
    scaffold_statement_ids: list[int] = field(default_factory=list)
    training_sets: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _engine(db: str | Engine | None) -> Engine:
    return db if isinstance(db, Engine) else get_engine(db)


def _record(engine: Engine, run_id: int, round_index: int, counts: dict[str, Any]) -> None:
    with session_scope(engine) as s:
        store.record_round_info(s, run_id=run_id, round_index=round_index, counts=counts)


# ----------------------------------------------------------------------------- 1. generate


def generate_conjectures(
    db: str | Engine | None, *, run_id: int, round_index: int, itp: str, generator: Any,
    backend: Any, config: ConjectureConfig | None = None,
    resolve_lemma: Callable[[str, str], str | None] | None = None,
    max_rejected_examples: int = 50,
) -> tuple[list[int], dict[str, Any]]:
    """Step 1: returns (conjecture ids of the round, counts). The counts (with a sample of
    rejected statements and their reasons) are recorded in ``rounds.counts['conjecturer']
    ['generate']`` in the same transaction as the conjectures; a round that has them is not
    generated again."""
    from prover.generation.base import SamplingParams

    cfg = config or ConjectureConfig()
    engine = _engine(db)
    with session_scope(engine) as s:
        done = store.round_counts(s, run_id=run_id, round_index=round_index).get("generate")
        if done is not None:  # this step already ran for the round: resume after it
            existing = store.conjectures_of_round(s, run_id=run_id, round_index=round_index)
            return [c.conjecture_id for c in existing], {**done, "resumed": True}
        cands = store.seed_candidates(s, itp=itp, dataset=cfg.dataset, split=cfg.split,
                                      min_pass_rate=cfg.seed_threshold,
                                      exclude_splits=cfg.eval_splits)
        size = store.benchmark_size(s, itp=itp, dataset=cfg.dataset, split=cfg.split)
        known = store.known_statements(s, itp=itp)
        evals = store.evaluation_statements(s, itp=itp, splits=cfg.eval_splits)
    if resolve_lemma is None and itp == "coq" and hasattr(backend, "open_goals"):
        resolve_lemma = coq_lemma_resolver(backend, timeout=cfg.check_timeout)
    seeds = select_seeds(
        cands, dataset_size=size, min_pass_rate=cfg.seed_threshold,
        empty_lemma_prob=cfg.empty_lemma_prob, lemma_cap_fraction=cfg.lemma_cap_fraction,
        seeds_per_statement=cfg.seeds_per_statement, max_seeds=cfg.max_seeds,
        seed=cfg.seed + 1000 * round_index, resolve_lemma=resolve_lemma,
    )
    counts: dict[str, Any] = {"seed_candidates": len(cands), "seeds": len(seeds)}
    if not seeds:
        counts.update(generated=0, parsed=0, stored=0)
        with session_scope(engine) as s:
            store.record_round_info(s, run_id=run_id, round_index=round_index,
                                    counts={"generate": counts})
        return [], counts
    prompts = [conjecture_prompt(itp, sd.lemma, sd.formal_statement, sd.proof) for sd in seeds]
    params = SamplingParams(n=cfg.conjectures_per_seed, temperature=cfg.temperature,
                            top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                            seed=cfg.seed + round_index, stop=(HARD_END,))
    outs = generator.generate(prompts, params)
    parsed: list[Candidate] = []
    reasons: dict[str, int] = {}
    rejected: list[tuple[str, str]] = []
    for sd, comps in zip(seeds, outs):
        for comp in comps:
            # stop strings are cut by the backend: a "stop" finish means the end tag was seen
            text = comp.text
            if getattr(comp, "finish_reason", None) == "stop" and HARD_END not in text:
                text += HARD_END
            pc, why = parse_conjecture(itp, text)
            if pc is None:
                reasons[why] = reasons.get(why, 0) + 1
                rejected.append((comp.text[:200], f"parse:{why}"))
                continue
            parsed.append(Candidate(len(parsed), itp, sd.header, pc.statement, pc.name,
                                    sd.statement_id, sd.attempt_id, sd.lemma, comp.text))
    counts["generated"] = sum(len(c) for c in outs)
    counts["parsed"] = len(parsed)
    counts["parse_failures"] = reasons
    # decontamination first, so that a match with an evaluation statement (which is also a
    # known statement) is reported as such
    r_con = decontaminate(parsed, evals, itp=itp, ngram_n=cfg.ngram_n,
                          ngram_threshold=cfg.ngram_threshold)
    r_dup = dedup(r_con.kept, itp=itp, existing=known)
    r_val = check_validity(
        r_dup.kept,
        lambda c: backend.check_statement(c.header, c.statement, timeout=cfg.check_timeout),
    )
    counts.update(
        duplicates=len(r_dup.rejected), contaminated=len(r_con.rejected),
        invalid=len(r_val.rejected), valid=len(r_val.kept),
    )
    rejected += [(c.statement, why) for r in (r_con, r_dup, r_val) for c, why in r.rejected]
    # a sample of what was turned away, for inspection (rounds.counts is not a log)
    counts["rejected_examples"] = [list(x) for x in rejected[:max_rejected_examples]]
    with session_scope(engine) as s:
        ids = store.store_conjectures(s, r_val.kept, run_id=run_id, round_index=round_index)
        counts["stored"] = len(ids)
        store.record_round_info(s, run_id=run_id, round_index=round_index,
                                counts={"generate": counts})
    return ids, counts


# ----------------------------------------------------------------------------- 2. attempts


def attempt_key(run_name: str, round_index: int, statement_id: int, sample: int) -> str:
    return f"{run_name}/conj-r{round_index}/{statement_id}/{sample}"


def attempt_conjectures(
    db: str | Engine | None, *, run_name: str, run_id: int, round_index: int, itp: str,
    generator: Any, backend: Any, config: ConjectureConfig | None = None,
    statement_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Step 2: the prover's attempts at the round's conjectures (or ``statement_ids``)."""
    from prover.attempts import completion_record
    from prover.checking import verify_pending
    from prover.generation.base import SamplingParams
    from prover.prompts import DEFAULT_FORMAT, get_format

    cfg = config or ConjectureConfig()
    engine = _engine(db)
    fmt = get_format(cfg.prover_format or DEFAULT_FORMAT[itp])
    with session_scope(engine) as s:
        conjs = store.conjectures_of_round(s, run_id=run_id, round_index=round_index)
        wanted = set(statement_ids) if statement_ids is not None else None
        todo = [c for c in conjs if wanted is None or c.statement_id in wanted]
        keys = [attempt_key(run_name, round_index, c.statement_id, i)
                for c in todo for i in range(cfg.prove_samples)]
        have = queries.attempts_by_keys(s, keys)
    todo = [c for c in todo
            if any(attempt_key(run_name, round_index, c.statement_id, i) not in have
                   for i in range(cfg.prove_samples))]
    params = SamplingParams(n=cfg.prove_samples, temperature=cfg.prove_temperature,
                            top_p=cfg.prove_top_p,
                            max_tokens=cfg.prove_max_tokens, seed=cfg.seed + round_index,
                            stop=fmt.stop)
    model = getattr(generator, "model", None)
    records: list[queries.AttemptRecord] = []
    if todo:
        prompts = [fmt.build(c.header, c.formal_statement) for c in todo]
        outs = generator.chat(prompts, params) if fmt.is_chat else generator.generate(prompts, params)
        records = [
            completion_record(
                fmt, key=attempt_key(run_name, round_index, c.statement_id, i),
                statement_id=c.statement_id, header=c.header, formal_statement=c.formal_statement,
                prompt=prompt, completion=comp, params=params, model=model, run_id=run_id,
                round_index=round_index, sample_index=i)
            for c, prompt, comps in zip(todo, prompts, outs)
            for i, comp in enumerate(comps)
        ]
        with session_scope(engine) as s:
            ids = queries.record_attempts(s, records)
        verify_pending(engine, backend, timeout=cfg.verify_timeout, attempt_ids=list(ids.values()))
    return {"conjectures_attempted": len(todo), "attempts": len(records)}


# ----------------------------------------------------------------------------- 3. select


def _resolve_embedder(embedder: Embedder | None, embed_model: str | None,
                      generator: Any) -> Embedder | None:
    if embedder is not None:
        return embedder
    path = embed_model
    if path is None:
        candidate = getattr(generator, "model", None)
        if isinstance(candidate, str) and Path(candidate).is_dir():
            path = candidate
    return hf_embedder(path) if path else None


def select_conjectures(
    db: str | Engine | None, *, run_id: int, round_index: int, itp: str,
    config: ConjectureConfig | None = None, embedder: Embedder | None = None,
) -> tuple[dict[int, float], dict[str, Any]]:
    """Step 3: returns ({conjecture id: weight} of the selected, counts)."""
    cfg = config or ConjectureConfig()
    engine = _engine(db)
    with session_scope(engine) as s:
        stats = store.conjecture_stats(s, run_id=run_id, round_index=round_index)
        conjs = {c.conjecture_id: c for c in
                 store.conjectures_of_round(s, run_id=run_id, round_index=round_index)}
        targets = store.unsolved_targets(s, itp=itp, dataset=cfg.dataset, split=cfg.split,
                                         exclude_splits=cfg.eval_splits)
    r_bp = barely_provable(stats, max_pass_rate=cfg.conjecture_threshold,
                           min_attempts=cfg.min_attempts)
    r_el = elegance(r_bp.kept, drop_fraction=cfg.elegance_drop)
    kept = r_el.kept
    counts: dict[str, Any] = {"attempted_conjectures": sum(1 for x in stats if x.attempts),
                              "barely_provable": len(r_bp.kept),
                              "not_barely_provable": r_bp.reasons(),
                              "inelegant": len(r_el.rejected), "targets": len(targets)}
    weights: dict[int, float] = {}
    if kept:
        if embedder is None:
            weights = {x.id: 1.0 for x in kept}
            counts["relevance"] = "skipped (no embedding model)"
        else:
            texts = [conjs[x.id].formal_statement for x in kept]
            cvec = np.asarray(embedder(texts))
            tvec = np.asarray(embedder([t for _, t in targets])) if targets else np.zeros((0, 1))
            res, w = reweight(kept, cvec, tvec, top_k=cfg.relevance_top_k, cap=cfg.relevance_cap)
            weights = {x.id: wi for x, wi in zip(res.kept, w)}
            counts["irrelevant"] = len(res.rejected)
    counts["selected"] = len(weights)
    with session_scope(engine) as s:
        store.mark_selection(s, run_id=run_id, round_index=round_index, weights=weights)
    return weights, counts


# ----------------------------------------------------------------------------- 4. scaffold


def scaffold_round(
    db: str | Engine | None, *, run_id: int, round_index: int, itp: str, backend: Any,
    config: ConjectureConfig | None = None,
) -> tuple[list[int], dict[str, Any]]:
    """Step 4: scaffolded statements from this round's failed attempts of unsolved benchmark
    statements. Returns (new statement ids, counts)."""
    cfg = config or ConjectureConfig()
    engine = _engine(db)
    with session_scope(engine) as s:
        failed = store.failed_attempts(s, itp=itp, run_id=run_id, round_index=round_index,
                                       per_statement=cfg.scaffold_per_statement,
                                       limit=cfg.scaffold_max_attempts)
        known = store.known_statements(s, itp=itp)
    cands = []
    for fa in failed:
        cands += extract_scaffolds(fa, backend, timeout=cfg.scaffold_timeout)
    res = filter_scaffolds(
        cands, existing=known,
        check=lambda sc: backend.check_statement(sc.header, sc.statement, timeout=cfg.check_timeout),
    )
    ids: list[int] = []
    sub_ids: dict[str, int] = {}
    with session_scope(engine) as s:
        for sc in res.kept:
            parent = sc.parent_statement_id
            if sc.origin != SUBGOAL:
                parent = sub_ids.get(sc.subgoal_name or "", parent)
            sid, _ = store.store_scaffold(
                s, itp=sc.itp, name=sc.name, header=sc.header, statement=sc.statement,
                origin=Origin(sc.origin), parent_statement_id=parent,
                parent_attempt_id=sc.parent_attempt_id, run_id=run_id, round_index=round_index,
            )
            if sc.origin == SUBGOAL:
                sub_ids[sc.name] = sid
            ids.append(sid)
    counts = {"failed_attempts": len(failed), "candidates": len(cands),
              "subgoals": sum(1 for x in res.kept if x.origin == SUBGOAL),
              "negations": sum(1 for x in res.kept if x.origin != SUBGOAL),
              "rejected": res.reasons()}
    return ids, counts


# ----------------------------------------------------------------------------- 5. training sets


def build_training_sets(
    db: str | Engine | None, *, run_id: int, round_index: int, out_dir: str | Path,
    config: ConjectureConfig | None = None,
) -> dict[str, Any]:
    """Step 5: write ``out_dir/round-{N}/{prover,conjecturer}`` and record them."""
    cfg = config or ConjectureConfig()
    engine = _engine(db)
    with session_scope(engine) as s:
        proofs = store.correct_proofs(s, run_id=run_id, round_index=round_index)
        rates = store.round_pass_rates(s, run_id=run_id, round_index=round_index)
        selected = store.selected_conjectures(s, run_id=run_id, round_index=round_index)
    pex = prover_examples(proofs, rates, prompt_format=cfg.prover_format,
                          max_pass_rate=cfg.prover_max_pass_rate,
                          per_statement=cfg.proofs_per_statement, length_coef=cfg.length_coef,
                          round_index=round_index)
    cex = conjecturer_examples(selected, round_index=round_index)
    base = Path(out_dir) / f"round-{round_index}"
    info = {"prover": write_dataset(pex, base / "prover"),
            "conjecturer": write_dataset(cex, base / "conjecturer")}
    with session_scope(engine) as s:
        store.record_round_info(s, run_id=run_id, round_index=round_index, training_sets=info)
    return info


# ----------------------------------------------------------------------------- the round


def run_conjecture_round(
    db: str | Engine | None,
    *,
    run_name: str,
    round_index: int,
    itp: str,
    generator: Any,
    backend: Any,
    prover_generator: Any = None,
    config: ConjectureConfig | None = None,
    embedder: Embedder | None = None,
    embed_model: str | None = None,
    out_dir: str | Path | None = None,
    resolve_lemma: Callable[[str, str], str | None] | None = None,
) -> RoundReport:
    """Run (or resume) one conjecture round of the self-play run ``run_name``.

    ``generator`` plays the conjecturer, ``prover_generator`` (default: the same model, as in
    STP) the prover; ``backend`` is the verifier backend of ``itp``. Embeddings for relevance
    come from ``embedder``, else ``embed_model``, else the generator's checkpoint directory;
    with none of them relevance is skipped (weight 1). ``resolve_lemma(header, name)`` turns
    a lemma name into the statement shown in the prompt (Coq default: asked from the backend,
    see :func:`conjecturer.seeds.coq_lemma_resolver`; Lean: the name). Training sets are
    written under ``out_dir`` when given.
    """
    cfg = config or ConjectureConfig()
    engine = _engine(db)
    with session_scope(engine) as s:
        run = queries.get_or_create_run(s, run_name, kind="selfplay")
        queries.get_or_create_round(s, run, round_index)
        run_id = run.id
    report = RoundReport(run_id, round_index)
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        report.timings[name] = round(now - t, 3)
        t = now

    report.conjecture_ids, c = generate_conjectures(
        engine, run_id=run_id, round_index=round_index, itp=itp, generator=generator,
        backend=backend, config=cfg, resolve_lemma=resolve_lemma)
    report.counts["generate"] = c
    lap("generate_s")
    if cfg.prove and report.conjecture_ids:
        report.counts["attempt"] = attempt_conjectures(
            engine, run_name=run_name, run_id=run_id, round_index=round_index, itp=itp,
            generator=prover_generator or generator, backend=backend, config=cfg)
    lap("attempt_s")
    emb = _resolve_embedder(embedder, embed_model, generator)
    report.selected, report.counts["select"] = select_conjectures(
        engine, run_id=run_id, round_index=round_index, itp=itp, config=cfg, embedder=emb)
    lap("select_s")
    if cfg.scaffold:
        report.scaffold_statement_ids, report.counts["scaffold"] = scaffold_round(
            engine, run_id=run_id, round_index=round_index, itp=itp, backend=backend, config=cfg)
    lap("scaffold_s")
    if out_dir is not None:
        report.training_sets = build_training_sets(
            engine, run_id=run_id, round_index=round_index, out_dir=out_dir, config=cfg)
    lap("training_sets_s")
    _record(engine, run_id, round_index, {**report.counts, "timings": report.timings,
                                          "config": dataclasses.asdict(cfg)})
    return report
