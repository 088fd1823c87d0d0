"""Database reads and writes of the conjecturer (named SQLAlchemy 2.0 queries).

Everything a conjecture round does lands in the proof database:

- a conjecture is a ``statements`` row with ``origin = 'conjecture'``, ``run_id``,
  ``round_index`` and ``parent_statement_id`` = its seed, plus a ``conjectures`` row linking
  it to the seed statement, the seed proof (``seed_attempt_id``), the lemma shown in the prompt
  (``''`` for the empty placeholder), and after selection ``selected`` and ``weight``;
- a scaffolded sub-goal is a ``statements`` row with ``origin = 'scaffold-subgoal'``,
  ``parent_statement_id`` = the statement the failed attempt tried and ``parent_attempt_id`` =
  that attempt; its negation has ``origin = 'scaffold-negation'``, ``parent_statement_id`` =
  the sub-goal's statement and the same ``parent_attempt_id``;
- the prover's attempts at conjectures are ordinary ``attempts`` rows of the self-play run and
  round;
- the round's funnel counts go to ``rounds.counts['conjecturer']`` and the training sets
  written for the round to ``rounds.config['training_sets']`` (``{role: {path, rows,
  weight_sum, statements}}``), so the trainer (and a user with psql) finds them there.

:data:`BARELY_PROVABLE_SQL` is the README query "conjectures of round N that were barely
provable, with their seeds" (portable SQL, SQLite and PostgreSQL).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, aliased

from conjecturer.dataset import CorrectProof, SelectedConjecture
from conjecturer.filters import Candidate, ProofStats
from conjecturer.seeds import SeedCandidate, SeedProof
from db import queries
from db.models import (
    Attempt,
    Conjecture,
    Dataset,
    DatasetEntry,
    Itp,
    Origin,
    Round,
    Run,
    Statement,
    Verdict,
    VerdictStatus,
)

BARELY_PROVABLE_SQL = """\
-- Conjectures of round N of a self-play run that were barely provable
-- (at least one correct proof, pass rate <= 0.25, over at least 8 attempts), with their seeds.
-- Parameters: run (the run's name), round (N).
SELECT c.id                AS conjecture_id,
       s.name              AS conjecture,
       s.formal_statement  AS conjecture_statement,
       seed.name           AS seed,
       seed.formal_statement AS seed_statement,
       c.lemma             AS lemma,
       COUNT(*)            AS attempts,
       SUM(CASE WHEN v.status = 'proved' THEN 1 ELSE 0 END) AS proved
FROM conjectures c
JOIN runs r        ON r.id = c.run_id
JOIN statements s  ON s.id = c.statement_id
JOIN statements seed ON seed.id = c.seed_statement_id
JOIN attempts a    ON a.statement_id = c.statement_id
                  AND a.run_id = c.run_id AND a.round_index = c.round_index
JOIN verdicts v    ON v.attempt_id = a.id
WHERE r.name = :run AND c.round_index = :round
GROUP BY c.id, s.name, s.formal_statement, seed.name, seed.formal_statement, c.lemma
HAVING SUM(CASE WHEN v.status = 'proved' THEN 1 ELSE 0 END) >= 1
   AND SUM(CASE WHEN v.status = 'proved' THEN 1 ELSE 0 END) <= 0.25 * COUNT(*)
   AND COUNT(*) >= 8
ORDER BY c.id
"""

_PROVED = func.sum(case((Verdict.status == VerdictStatus.PROVED, 1), else_=0))


def _eval_statement_ids(splits: Sequence[str]):
    return select(DatasetEntry.statement_id).where(DatasetEntry.split.in_(list(splits)))


def _dataset_filter(session: Session, q, dataset: str | None, split: str | None):
    if dataset is None and split is None:
        return q
    sub = select(DatasetEntry.statement_id)
    if dataset is not None:
        ds = queries.latest_dataset(session, dataset)
        if ds is None:
            raise LookupError(f"dataset {dataset!r} is not in the database")
        sub = sub.where(DatasetEntry.dataset_id == ds.id)
    if split is not None:
        sub = sub.where(DatasetEntry.split == split)
    return q.where(Statement.id.in_(sub))


# ----------------------------------------------------------------------------- seeds


def seed_candidates(
    session: Session,
    *,
    itp: str,
    dataset: str | None = None,
    split: str | None = None,
    min_pass_rate: float = 0.35,
    exclude_splits: Sequence[str] = ("test",),
) -> list[SeedCandidate]:
    """Benchmark statements whose best pass rate over any (run, round) exceeds
    ``min_pass_rate``, with their correct proofs (those without helper lemmas)."""
    q = (
        select(Attempt.statement_id, Attempt.run_id, Attempt.round_index, func.count(), _PROVED)
        .join(Verdict, Verdict.attempt_id == Attempt.id)
        .join(Statement, Statement.id == Attempt.statement_id)
        .where(Statement.itp == Itp(itp), Statement.origin == Origin.BENCHMARK)
        .group_by(Attempt.statement_id, Attempt.run_id, Attempt.round_index)
    )
    if exclude_splits:
        q = q.where(Statement.id.not_in(_eval_statement_ids(exclude_splits)))
    q = _dataset_filter(session, q, dataset, split)
    best: dict[int, float] = {}
    for sid, _run, _rnd, n, p in session.execute(q):
        if n:
            best[sid] = max(best.get(sid, 0.0), (p or 0) / n)
    ids = sorted(sid for sid, r in best.items() if r > min_pass_rate)
    if not ids:
        return []
    proofs: dict[int, list[SeedProof]] = defaultdict(list)
    seen: set[tuple[int, str]] = set()
    for aid, sid, proof in session.execute(
        select(Attempt.id, Attempt.statement_id, Attempt.proof)
        .join(Verdict, Verdict.attempt_id == Attempt.id)
        .where(Attempt.statement_id.in_(ids), Verdict.status == VerdictStatus.PROVED,
               Attempt.proof.is_not(None),
               (Attempt.helpers.is_(None)) | (Attempt.helpers == ""))
        .order_by(Attempt.id)
    ):
        if (sid, proof) not in seen:
            seen.add((sid, proof))
            proofs[sid].append(SeedProof(aid, proof))
    out = []
    for st in session.scalars(select(Statement).where(Statement.id.in_(ids)).order_by(Statement.id)):
        if proofs.get(st.id):
            out.append(SeedCandidate(st.id, st.itp.value, st.name, st.header, st.formal_statement,
                                     best[st.id], tuple(proofs[st.id])))
    return out


def benchmark_size(session: Session, *, itp: str, dataset: str | None = None,
                   split: str | None = None) -> int:
    q = select(func.count(Statement.id)).where(
        Statement.itp == Itp(itp), Statement.origin == Origin.BENCHMARK
    )
    q = _dataset_filter(session, q, dataset, split)
    return int(session.scalar(q) or 0)


def known_statements(session: Session, *, itp: str) -> list[str]:
    """Every statement text of this ITP already in the database (dedup reference)."""
    return list(session.scalars(
        select(Statement.formal_statement).where(Statement.itp == Itp(itp)).order_by(Statement.id)
    ))


def evaluation_statements(session: Session, *, itp: str,
                          splits: Sequence[str] = ("test",)) -> list[str]:
    """Statements in an evaluation split of any dataset (decontamination reference)."""
    return list(session.scalars(
        select(Statement.formal_statement)
        .where(Statement.itp == Itp(itp), Statement.id.in_(_eval_statement_ids(splits)))
        .order_by(Statement.id)
    ))


def unsolved_targets(
    session: Session, *, itp: str, dataset: str | None = None, split: str | None = None,
    exclude_splits: Sequence[str] = ("test",),
) -> list[tuple[int, str]]:
    """(id, statement) of benchmark statements with no proved attempt (evaluation splits
    excluded): the targets relevance re-weighting aims at."""
    proved = (
        select(Attempt.statement_id)
        .join(Verdict, Verdict.attempt_id == Attempt.id)
        .where(Verdict.status == VerdictStatus.PROVED)
    )
    q = select(Statement.id, Statement.formal_statement).where(
        Statement.itp == Itp(itp), Statement.origin == Origin.BENCHMARK,
        Statement.id.not_in(proved),
    )
    if exclude_splits:
        q = q.where(Statement.id.not_in(_eval_statement_ids(exclude_splits)))
    q = _dataset_filter(session, q, dataset, split).order_by(Statement.id)
    return [(i, s) for i, s in session.execute(q)]


# ----------------------------------------------------------------------------- conjectures


@dataclass(frozen=True)
class StoredConjecture:
    conjecture_id: int
    statement_id: int
    itp: str
    header: str
    formal_statement: str
    name: str
    seed_statement_id: int
    seed_attempt_id: int | None
    lemma: str
    selected: bool
    weight: float | None


def store_conjectures(
    session: Session, candidates: Sequence[Candidate], *, run_id: int, round_index: int
) -> list[int]:
    """Statements (origin conjecture) and their links; returns conjecture ids in input order.
    Idempotent: a statement already linked keeps its first link."""
    out = []
    for c in candidates:
        st, _ = queries.upsert_statement(
            session, itp=c.itp, name=c.name, header=c.header, formal_statement=c.statement,
            origin=Origin.CONJECTURE, parent_statement_id=c.seed_statement_id,
            run_id=run_id, round_index=round_index,
        )
        link = session.scalars(select(Conjecture).where(Conjecture.statement_id == st.id)).one_or_none()
        if link is None:
            link = Conjecture(statement_id=st.id, seed_statement_id=c.seed_statement_id,
                              seed_attempt_id=c.seed_attempt_id, lemma=c.lemma, run_id=run_id,
                              round_index=round_index, selected=False)
            session.add(link)
            session.flush()
        out.append(link.id)
    return out


def conjectures_of_round(session: Session, *, run_id: int, round_index: int) -> list[StoredConjecture]:
    rows = session.execute(
        select(Conjecture, Statement)
        .join(Statement, Statement.id == Conjecture.statement_id)
        .where(Conjecture.run_id == run_id, Conjecture.round_index == round_index)
        .order_by(Conjecture.id)
    )
    return [
        StoredConjecture(c.id, s.id, s.itp.value, s.header, s.formal_statement, s.name,
                         c.seed_statement_id, c.seed_attempt_id, c.lemma, c.selected, c.weight)
        for c, s in rows
    ]


def conjecture_stats(session: Session, *, run_id: int, round_index: int) -> list[ProofStats]:
    """Attempts, proofs and shortest proof length of this round's conjectures (attempts of the
    same run and round)."""
    shortest = func.min(case((Verdict.status == VerdictStatus.PROVED, func.length(Attempt.proof))))
    att = (
        select(Attempt.statement_id.label("sid"), func.count().label("n"),
               _PROVED.label("p"), shortest.label("short"))
        .join(Verdict, Verdict.attempt_id == Attempt.id)
        .where(Attempt.run_id == run_id, Attempt.round_index == round_index)
        .group_by(Attempt.statement_id)
        .subquery()
    )
    rows = session.execute(
        select(Conjecture.id, Conjecture.statement_id, Conjecture.lemma,
               func.length(Statement.formal_statement), att.c.n, att.c.p, att.c.short)
        .join(Statement, Statement.id == Conjecture.statement_id)
        .outerjoin(att, att.c.sid == Conjecture.statement_id)
        .where(Conjecture.run_id == run_id, Conjecture.round_index == round_index)
        .order_by(Conjecture.id)
    )
    return [
        ProofStats(cid, sid, lemma or "", int(slen or 0), int(n or 0), int(p or 0),
                   int(short) if short is not None else None)
        for cid, sid, lemma, slen, n, p, short in rows
    ]


def mark_selection(session: Session, *, run_id: int, round_index: int,
                   weights: Mapping[int, float]) -> None:
    """Set ``selected``/``weight`` for this round's conjectures: ids in ``weights`` are
    selected with that weight, every other conjecture of the round is unselected."""
    for c in session.scalars(
        select(Conjecture).where(Conjecture.run_id == run_id, Conjecture.round_index == round_index)
    ):
        if c.id in weights:
            c.selected, c.weight = True, float(weights[c.id])
        else:
            c.selected, c.weight = False, None
    session.flush()


def selected_conjectures(session: Session, *, run_id: int, round_index: int) -> list[SelectedConjecture]:
    seed = aliased(Statement)
    rows = session.execute(
        select(Conjecture, Statement, seed, Attempt.proof)
        .join(Statement, Statement.id == Conjecture.statement_id)
        .join(seed, seed.id == Conjecture.seed_statement_id)
        .outerjoin(Attempt, Attempt.id == Conjecture.seed_attempt_id)
        .where(Conjecture.run_id == run_id, Conjecture.round_index == round_index,
               Conjecture.selected.is_(True))
        .order_by(Conjecture.id)
    )
    return [
        SelectedConjecture(c.id, s.id, c.seed_statement_id, c.seed_attempt_id, s.itp.value,
                           c.lemma, sd.formal_statement, proof or "", s.formal_statement,
                           float(c.weight if c.weight is not None else 1.0))
        for c, s, sd, proof in rows
    ]


# ----------------------------------------------------------------------------- training data


def correct_proofs(session: Session, *, run_id: int, round_index: int | None = None) -> list[CorrectProof]:
    q = (
        select(Attempt.id, Attempt.statement_id, Attempt.proof, Attempt.helpers, Verdict.seconds,
               Statement.itp, Statement.header, Statement.formal_statement, Statement.informal)
        .join(Verdict, Verdict.attempt_id == Attempt.id)
        .join(Statement, Statement.id == Attempt.statement_id)
        .where(Attempt.run_id == run_id, Verdict.status == VerdictStatus.PROVED,
               Attempt.proof.is_not(None))
        .order_by(Attempt.id)
    )
    if round_index is not None:
        q = q.where(Attempt.round_index == round_index)
    return [
        CorrectProof(sid, aid, itp.value, header, stmt, proof, helpers or "", informal,
                     float(secs or 0.0))
        for aid, sid, proof, helpers, secs, itp, header, stmt, informal in session.execute(q)
    ]


def round_pass_rates(session: Session, *, run_id: int, round_index: int | None = None) -> dict[int, float]:
    return {p.statement_id: p.pass_rate
            for p in queries.pass_rates(session, run_id=run_id, round_index=round_index)}


def _round(session: Session, run_id: int, round_index: int) -> Round:
    run = session.get(Run, run_id)
    assert run is not None
    return queries.get_or_create_round(session, run, round_index)


def round_counts(session: Session, *, run_id: int, round_index: int) -> dict[str, Any]:
    """``rounds.counts['conjecturer']`` of the round ({} when the round has none)."""
    rnd = session.scalars(
        select(Round).where(Round.run_id == run_id, Round.index == round_index)
    ).one_or_none()
    return dict((rnd.counts or {}).get("conjecturer", {})) if rnd else {}


def record_round_info(
    session: Session, *, run_id: int, round_index: int,
    counts: Mapping[str, Any] | None = None, training_sets: Mapping[str, Any] | None = None,
) -> None:
    """Merge the conjecturer's funnel counts into ``rounds.counts['conjecturer']`` and the
    training-set summaries into ``rounds.config['training_sets']`` (other keys are kept)."""
    rnd = _round(session, run_id, round_index)
    if counts is not None:
        new = dict(rnd.counts or {})
        new["conjecturer"] = {**new.get("conjecturer", {}), **dict(counts)}
        rnd.counts = new
    if training_sets is not None:
        cfg = dict(rnd.config or {})
        cfg["training_sets"] = {**cfg.get("training_sets", {}), **dict(training_sets)}
        rnd.config = cfg
    session.flush()


def training_sets_of_round(session: Session, *, run_name: str, round_index: int) -> dict[str, Any]:
    rnd = session.scalars(
        select(Round).join(Run, Run.id == Round.run_id)
        .where(Run.name == run_name, Round.index == round_index)
    ).one_or_none()
    return dict((rnd.config or {}).get("training_sets", {})) if rnd else {}


# ----------------------------------------------------------------------------- scaffolding


@dataclass(frozen=True)
class FailedAttempt:
    attempt_id: int
    statement_id: int
    itp: str
    header: str
    formal_statement: str
    proof: str
    status: str
    messages: list[Any]


def failed_attempts(
    session: Session, *, itp: str, run_id: int | None = None, round_index: int | None = None,
    per_statement: int = 2, only_unsolved: bool = True, origins: Iterable[Origin] = (Origin.BENCHMARK,),
    limit: int | None = None,
) -> list[FailedAttempt]:
    """Failed (or timed-out) attempts with a proof, at most ``per_statement`` per statement
    (lowest ids first); by default only of statements never proved."""
    q = (
        select(Attempt.id, Attempt.statement_id, Statement.itp, Statement.header,
               Statement.formal_statement, Attempt.proof, Verdict.status, Verdict.messages)
        .join(Verdict, Verdict.attempt_id == Attempt.id)
        .join(Statement, Statement.id == Attempt.statement_id)
        .where(Statement.itp == Itp(itp), Attempt.proof.is_not(None),
               Verdict.status.in_([VerdictStatus.FAILED, VerdictStatus.TIMEOUT]),
               (Verdict.reason.is_(None)) | (Verdict.reason != "no_proof_found"),
               Statement.origin.in_(list(origins)))
        .order_by(Attempt.statement_id, Attempt.id)
    )
    if run_id is not None:
        q = q.where(Attempt.run_id == run_id)
    if round_index is not None:
        q = q.where(Attempt.round_index == round_index)
    if only_unsolved:
        proved = (select(Attempt.statement_id).join(Verdict, Verdict.attempt_id == Attempt.id)
                  .where(Verdict.status == VerdictStatus.PROVED))
        q = q.where(Attempt.statement_id.not_in(proved))
    out: list[FailedAttempt] = []
    count: dict[int, int] = defaultdict(int)
    for aid, sid, it, header, stmt, proof, status, messages in session.execute(q):
        if count[sid] >= per_statement:
            continue
        count[sid] += 1
        out.append(FailedAttempt(aid, sid, it.value, header, stmt, proof, status.value,
                                 list(messages or [])))
        if limit is not None and len(out) >= limit:
            break
    return out


def store_scaffold(
    session: Session, *, itp: str, name: str, header: str, statement: str, origin: Origin,
    parent_statement_id: int, parent_attempt_id: int, run_id: int | None, round_index: int | None,
) -> tuple[int, bool]:
    st, created = queries.upsert_statement(
        session, itp=itp, name=name, header=header, formal_statement=statement, origin=origin,
        parent_statement_id=parent_statement_id, parent_attempt_id=parent_attempt_id,
        run_id=run_id, round_index=round_index,
    )
    return st.id, created


def scaffolds_of_round(session: Session, *, run_id: int, round_index: int) -> list[Statement]:
    return list(session.scalars(
        select(Statement).where(
            Statement.run_id == run_id, Statement.round_index == round_index,
            Statement.origin.in_([Origin.SCAFFOLD_SUBGOAL, Origin.SCAFFOLD_NEGATION]),
        ).order_by(Statement.id)
    ))


def dataset_names(session: Session) -> list[str]:
    return list(session.scalars(select(Dataset.name).distinct().order_by(Dataset.name)))

