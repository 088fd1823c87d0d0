"""Named queries: every read and write the rest of the system does on the proof database.

Writes are idempotent (statement hashes, attempt keys), so re-delivered work never duplicates
rows. Reads return plain records.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import (
    Attempt,
    AttemptMode,
    Checkpoint,
    CheckpointStage,
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

_WS = re.compile(r"\s+")


def normalize_ws(text: str) -> str:
    return _WS.sub(" ", text).strip()


def statement_hash(itp: str, header: str, formal_statement: str) -> str:
    """Identity of a statement: the same (itp, header, statement) up to whitespace."""
    key = "\0".join((itp, normalize_ws(header), normalize_ws(formal_statement)))
    return hashlib.sha256(key.encode()).hexdigest()


def proof_hash(proof: str, helpers: str = "") -> str:
    """Identity of the checked text: identical proofs are verified once."""
    return hashlib.sha256(f"{helpers}\0{proof}".encode()).hexdigest()


def _insert(session: Session, model: type) -> Any:
    """INSERT that can ignore conflicts, in the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")


# --- statements and datasets -------------------------------------------------------------


def upsert_statement(
    session: Session,
    *,
    itp: str,
    name: str,
    header: str,
    formal_statement: str,
    informal: str | None = None,
    origin: Origin = Origin.BENCHMARK,
    parent_statement_id: int | None = None,
    parent_attempt_id: int | None = None,
    run_id: int | None = None,
    round_index: int | None = None,
) -> tuple[Statement, bool]:
    """The statement with this identity, created if new. Returns (statement, created)."""
    h = statement_hash(itp, header, formal_statement)
    stmt = _insert(session, Statement).values(
        itp=Itp(itp).value,
        name=name,
        header=header,
        formal_statement=formal_statement,
        informal=informal,
        norm_hash=h,
        origin=origin.value,
        parent_statement_id=parent_statement_id,
        parent_attempt_id=parent_attempt_id,
        run_id=run_id,
        round_index=round_index,
    )
    # RETURNING tells whether a row was inserted on every dialect (rowcount does not).
    created = session.execute(
        stmt.on_conflict_do_nothing(index_elements=["norm_hash"]).returning(Statement.id)
    ).first()
    row = session.scalars(select(Statement).where(Statement.norm_hash == h)).one()
    return row, created is not None


def get_or_create_dataset(
    session: Session, *, name: str, itp: str, version: str, source: str
) -> tuple[Dataset, bool]:
    found = session.scalars(
        select(Dataset).where(Dataset.name == name, Dataset.version == version)
    ).one_or_none()
    if found is not None:
        return found, False
    ds = Dataset(name=name, itp=Itp(itp), version=version, source=source)
    session.add(ds)
    session.flush()
    return ds, True


def add_dataset_entry(
    session: Session, dataset: Dataset, statement: Statement, *, name: str, split: str,
    extra: dict[str, Any] | None = None,
) -> bool:
    stmt = _insert(session, DatasetEntry).values(
        dataset_id=dataset.id, statement_id=statement.id, name=name, split=split, extra=extra
    )
    inserted = session.execute(
        stmt.on_conflict_do_nothing(index_elements=["dataset_id", "name"]).returning(DatasetEntry.id)
    ).first()
    return inserted is not None


@dataclass(frozen=True)
class StatementRecord:
    id: int
    itp: str
    name: str
    split: str | None
    header: str
    formal_statement: str
    informal: str | None
    origin: str


def dataset_statements(
    session: Session, dataset: str, *, split: str | None = None, limit: int | None = None
) -> list[StatementRecord]:
    """Statements of the newest imported version of a dataset, in name order."""
    ds = latest_dataset(session, dataset)
    if ds is None:
        raise LookupError(f"dataset {dataset!r} is not in the database; run `prover data import`")
    q = (
        select(Statement, DatasetEntry.name, DatasetEntry.split)
        .join(DatasetEntry, DatasetEntry.statement_id == Statement.id)
        .where(DatasetEntry.dataset_id == ds.id)
        .order_by(DatasetEntry.name)
    )
    if split:
        q = q.where(DatasetEntry.split == split)
    if limit:
        q = q.limit(limit)
    return [
        StatementRecord(s.id, s.itp.value, name, sp, s.header, s.formal_statement, s.informal,
                        s.origin.value)
        for s, name, sp in session.execute(q)
    ]


def latest_dataset(session: Session, name: str) -> Dataset | None:
    return session.scalars(
        select(Dataset).where(Dataset.name == name).order_by(Dataset.id.desc()).limit(1)
    ).one_or_none()


# --- runs, rounds, checkpoints -----------------------------------------------------------


def get_or_create_run(
    session: Session, name: str, *, kind: str, config: dict[str, Any] | None = None
) -> Run:
    run = session.scalars(select(Run).where(Run.name == name)).one_or_none()
    if run is None:
        run = Run(name=name, kind=kind, config=config or {})
        session.add(run)
        session.flush()
    return run


def get_or_create_round(
    session: Session, run: Run, index: int, *, config: dict[str, Any] | None = None
) -> Round:
    rnd = session.scalars(
        select(Round).where(Round.run_id == run.id, Round.index == index)
    ).one_or_none()
    if rnd is None:
        rnd = Round(run_id=run.id, index=index, config=config or {})
        session.add(rnd)
        session.flush()
    return rnd


def register_checkpoint(
    session: Session,
    *,
    path: str,
    stage: CheckpointStage | str,
    base_model: str | None = None,
    parent_ids: Sequence[int] = (),
    run_id: int | None = None,
    round_id: int | None = None,
    data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Checkpoint:
    """Register (or update the metrics of) the checkpoint at `path`."""
    ckpt = session.scalars(select(Checkpoint).where(Checkpoint.path == path)).one_or_none()
    if ckpt is None:
        ckpt = Checkpoint(
            path=path,
            stage=CheckpointStage(stage),
            base_model=base_model,
            parent_ids=list(parent_ids),
            run_id=run_id,
            round_id=round_id,
            data=data or {},
            metrics=metrics or {},
        )
        session.add(ckpt)
    else:
        ckpt.metrics = {**ckpt.metrics, **(metrics or {})}
    session.flush()
    return ckpt


# --- attempts and verdicts ---------------------------------------------------------------


@dataclass
class AttemptRecord:
    """One proof attempt and (optionally) its verdict, as plain data."""

    key: str
    statement_id: int
    proof: str | None
    helpers: str = ""
    run_id: int | None = None
    round_index: int | None = None
    checkpoint_id: int | None = None
    model: str | None = None
    mode: str = AttemptMode.WHOLE_PROOF.value
    correction_round: int = 0
    parent_attempt_id: int | None = None
    sample_index: int = 0
    prompt: str | None = None
    completion: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    sampling: dict[str, Any] | None = None
    verdict: dict[str, Any] | None = None  # keys as in verifier.types.Verdict.to_dict()

    def attempt_row(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "statement_id": self.statement_id,
            "run_id": self.run_id,
            "round_index": self.round_index,
            "checkpoint_id": self.checkpoint_id,
            "model": self.model,
            "mode": AttemptMode(self.mode).value,
            "correction_round": self.correction_round,
            "parent_attempt_id": self.parent_attempt_id,
            "sample_index": self.sample_index,
            "prompt": self.prompt,
            "completion": self.completion,
            "proof": self.proof,
            "helpers": self.helpers or None,
            "proof_hash": proof_hash(self.proof, self.helpers) if self.proof is not None else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "sampling": self.sampling,
        }


def verdict_row(attempt_id: int, v: dict[str, Any]) -> dict[str, Any]:
    return {
        "attempt_id": attempt_id,
        "status": VerdictStatus(v["status"]).value,
        "reason": v.get("reason"),
        "messages": v.get("messages") or [],
        "axioms": v.get("axioms") or [],
        "seconds": float(v.get("seconds") or 0.0),
        "backend": v.get("backend") or "",
        "backend_version": v.get("backend_version") or "",
        "sandboxed": bool(v.get("sandboxed", True)),
    }


def record_attempts(
    session: Session, records: Sequence[AttemptRecord], *, batch_size: int = 5000
) -> dict[str, int]:
    """Insert attempts (and their verdicts) idempotently. Returns key -> attempt id.

    An attempt whose key exists is left as it is; a verdict is added to an attempt that has
    none yet, so work that crashed between generation and verification completes on retry.
    """
    if session.get_bind().dialect.name == "postgresql":
        return _record_attempts_pg(session, records, batch_size)
    ids: dict[str, int] = {}
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        ins = _insert(session, Attempt)
        session.execute(
            ins.on_conflict_do_nothing(index_elements=["key"]), [r.attempt_row() for r in chunk]
        )
        keys = [r.key for r in chunk]
        found = session.execute(select(Attempt.key, Attempt.id).where(Attempt.key.in_(keys)))
        ids.update({k: i for k, i in found})
        verdicts = [verdict_row(ids[r.key], r.verdict) for r in chunk if r.verdict is not None]
        if verdicts:
            vins = _insert(session, Verdict)
            session.execute(vins.on_conflict_do_nothing(index_elements=["attempt_id"]), verdicts)
    return ids


_ATTEMPT_COLS = [
    "key", "statement_id", "run_id", "round_index", "checkpoint_id", "model", "mode",
    "correction_round", "parent_attempt_id", "sample_index", "prompt", "completion", "proof",
    "helpers", "proof_hash", "prompt_tokens", "completion_tokens", "sampling",
]
_VERDICT_COLS = ["status", "reason", "messages", "axioms", "seconds", "backend",
                 "backend_version", "sandboxed"]
_JSON_COLS = {"sampling", "messages", "axioms"}


def _record_attempts_pg(
    session: Session, records: Sequence[AttemptRecord], batch_size: int
) -> dict[str, int]:
    """PostgreSQL fast path: COPY into a session-local staging table, then set-based
    INSERT ... SELECT ... ON CONFLICT DO NOTHING (3x faster than executemany here).
    Duplicate keys within one batch are fine: DO NOTHING skips the later ones."""
    conn = session.connection()
    conn.exec_driver_sql(
        "CREATE TEMP TABLE IF NOT EXISTS attempt_stage ("
        "key varchar(128), statement_id int, run_id int, round_index int, checkpoint_id int, "
        "model text, mode varchar(32), correction_round int, parent_attempt_id int, "
        "sample_index int, prompt text, completion text, proof text, helpers text, proof_hash varchar(64), "
        "prompt_tokens int, completion_tokens int, sampling json, status varchar(32), "
        "reason varchar(200), messages json, axioms json, seconds float, backend varchar(32), "
        "backend_version varchar(200), sandboxed boolean)"
    )
    cols = _ATTEMPT_COLS + _VERDICT_COLS
    attempt_cols = ", ".join(_ATTEMPT_COLS)
    ids: dict[str, int] = {}
    cursor = conn.connection.driver_connection.cursor()
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        conn.exec_driver_sql("TRUNCATE attempt_stage")
        with cursor.copy(f"COPY attempt_stage ({', '.join(cols)}) FROM STDIN") as copy:
            for r in chunk:
                row = r.attempt_row()
                v = verdict_row(0, r.verdict) if r.verdict is not None else {}
                values = [row[c] for c in _ATTEMPT_COLS] + [v.get(c) for c in _VERDICT_COLS]
                copy.write_row([
                    json.dumps(x) if c in _JSON_COLS and x is not None else x
                    for c, x in zip(cols, values)
                ])
        conn.exec_driver_sql(
            f"INSERT INTO attempts ({attempt_cols}) SELECT {attempt_cols} "
            "FROM attempt_stage ON CONFLICT (key) DO NOTHING"
        )
        conn.exec_driver_sql(
            f"INSERT INTO verdicts (attempt_id, {', '.join(_VERDICT_COLS)}) "
            f"SELECT a.id, {', '.join('st.' + c for c in _VERDICT_COLS)} "
            "FROM attempt_stage st JOIN attempts a ON a.key = st.key "
            "WHERE st.status IS NOT NULL ON CONFLICT (attempt_id) DO NOTHING"
        )
        found = conn.exec_driver_sql(
            "SELECT a.key, a.id FROM attempt_stage st JOIN attempts a ON a.key = st.key"
        )
        ids.update({k: i for k, i in found})
    return ids


def record_verdicts(session: Session, verdicts: dict[int, dict[str, Any]]) -> None:
    """Attach verdicts to attempts that have none yet (idempotent)."""
    if verdicts:
        rows = [verdict_row(aid, v) for aid, v in verdicts.items()]
        ins = _insert(session, Verdict)
        session.execute(ins.on_conflict_do_nothing(index_elements=["attempt_id"]), rows)


@dataclass(frozen=True)
class AttemptView:
    id: int
    key: str
    statement_id: int
    proof: str | None
    completion: str | None
    mode: str
    correction_round: int
    parent_attempt_id: int | None
    sample_index: int
    status: str | None
    reason: str | None
    messages: list[Any] = field(default_factory=list)
    seconds: float | None = None
    helpers: str = ""


def _attempt_views(session: Session, q: Select) -> list[AttemptView]:
    rows = session.execute(
        q.add_columns(Verdict.status, Verdict.reason, Verdict.messages, Verdict.seconds)
        .outerjoin(Verdict, Verdict.attempt_id == Attempt.id)
        .order_by(Attempt.id)
    )
    return [
        AttemptView(
            a.id, a.key, a.statement_id, a.proof, a.completion, a.mode.value, a.correction_round,
            a.parent_attempt_id, a.sample_index,
            status.value if status is not None else None, reason, messages or [], seconds,
            a.helpers or "",
        )
        for a, status, reason, messages, seconds in rows
    ]


def attempts_by_keys(session: Session, keys: Iterable[str]) -> dict[str, AttemptView]:
    out: dict[str, AttemptView] = {}
    keys = list(keys)
    for start in range(0, len(keys), 5000):
        chunk = keys[start : start + 5000]
        for view in _attempt_views(session, select(Attempt).where(Attempt.key.in_(chunk))):
            out[view.key] = view
    return out


def attempts_of_run(
    session: Session, run_id: int, *, round_index: int | None = None
) -> list[AttemptView]:
    q = select(Attempt).where(Attempt.run_id == run_id)
    if round_index is not None:
        q = q.where(Attempt.round_index == round_index)
    return _attempt_views(session, q)


# --- pass rates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PassRate:
    statement_id: int
    name: str
    attempts: int
    proved: int

    @property
    def pass_rate(self) -> float:
        return self.proved / self.attempts if self.attempts else 0.0


_PROVED = func.sum(case((Verdict.status == VerdictStatus.PROVED, 1), else_=0))


def pass_rates(
    session: Session,
    *,
    run_id: int | None = None,
    round_index: int | None = None,
    statement_ids: Iterable[int] | None = None,
) -> list[PassRate]:
    """Proved / verified attempts per statement (identical proofs counted with multiplicity),
    overall or restricted to a run and round."""
    q = (
        select(Attempt.statement_id, func.count(), _PROVED)
        .join(Verdict, Verdict.attempt_id == Attempt.id)
        .group_by(Attempt.statement_id)
    )
    if run_id is not None:
        q = q.where(Attempt.run_id == run_id)
    if round_index is not None:
        q = q.where(Attempt.round_index == round_index)
    if statement_ids is not None:
        q = q.where(Attempt.statement_id.in_(list(statement_ids)))
    sub = q.subquery()
    rows = session.execute(
        select(sub.c[0], Statement.name, sub.c[1], sub.c[2])
        .join(Statement, Statement.id == sub.c[0])
        .order_by(sub.c[0])
    )
    return [PassRate(sid, name, int(n), int(p or 0)) for sid, name, n, p in rows]


def never_proved(session: Session, *, dataset: str | None = None) -> list[StatementRecord]:
    """Statements with no proved attempt (optionally within a dataset's newest version)."""
    proved = (
        select(Attempt.statement_id)
        .join(Verdict, Verdict.attempt_id == Attempt.id)
        .where(Verdict.status == VerdictStatus.PROVED)
    )
    q = select(Statement, DatasetEntry.name, DatasetEntry.split).outerjoin(
        DatasetEntry, DatasetEntry.statement_id == Statement.id
    )
    if dataset is not None:
        ds = latest_dataset(session, dataset)
        if ds is None:
            return []
        q = q.where(DatasetEntry.dataset_id == ds.id)
    q = q.where(Statement.id.not_in(proved)).order_by(Statement.id)
    seen: dict[int, StatementRecord] = {}
    for s, name, split in session.execute(q):
        seen.setdefault(
            s.id,
            StatementRecord(s.id, s.itp.value, name or s.name, split, s.header,
                            s.formal_statement, s.informal, s.origin.value),
        )
    return list(seen.values())


# --- stats -------------------------------------------------------------------------------


def stats(session: Session) -> dict[str, list[tuple[Any, ...]]]:
    """Counts by dataset, statement origin, and verdict status."""
    datasets = session.execute(
        select(Dataset.name, Dataset.itp, Dataset.version, DatasetEntry.split, func.count())
        .join(DatasetEntry, DatasetEntry.dataset_id == Dataset.id)
        .group_by(Dataset.name, Dataset.itp, Dataset.version, DatasetEntry.split)
        .order_by(Dataset.name, DatasetEntry.split)
    ).all()
    origins = session.execute(
        select(Statement.origin, func.count()).group_by(Statement.origin).order_by(Statement.origin)
    ).all()
    statuses = session.execute(
        select(Verdict.status, func.count()).group_by(Verdict.status).order_by(Verdict.status)
    ).all()
    unverified = session.scalar(
        select(func.count()).select_from(Attempt).outerjoin(Verdict).where(Verdict.id.is_(None))
    )
    return {
        "datasets": [(n, i.value, v[:12], sp, c) for n, i, v, sp, c in datasets],
        "origins": [(o.value, c) for o, c in origins],
        "verdicts": [(s.value, c) for s, c in statuses] + [("(unverified)", unverified or 0)],
    }


@dataclass(frozen=True)
class PendingCheck:
    """An attempt with an extracted proof and no verdict yet, with what the verifier needs."""

    attempt_id: int
    statement_id: int
    itp: str
    header: str
    formal_statement: str
    proof: str
    helpers: str
    proof_hash: str


def pending_checks(
    session: Session, *, run_id: int | None = None, attempt_ids: Iterable[int] | None = None
) -> list[PendingCheck]:
    q = (
        select(Attempt.id, Attempt.statement_id, Statement.itp, Statement.header,
               Statement.formal_statement, Attempt.proof, Attempt.helpers, Attempt.proof_hash)
        .join(Statement, Statement.id == Attempt.statement_id)
        .outerjoin(Verdict, Verdict.attempt_id == Attempt.id)
        .where(Verdict.id.is_(None), Attempt.proof.is_not(None))
        .order_by(Attempt.id)
    )
    if run_id is not None:
        q = q.where(Attempt.run_id == run_id)
    if attempt_ids is not None:
        q = q.where(Attempt.id.in_(list(attempt_ids)))
    return [
        PendingCheck(aid, sid, itp.value, header, stmt, proof, helpers or "", ph)
        for aid, sid, itp, header, stmt, proof, helpers, ph in session.execute(q)
    ]


def statements_with_proof(session: Session, statement_ids: Iterable[int]) -> set[int]:
    """Which of these statements have at least one proved attempt."""
    ids = list(statement_ids)
    if not ids:
        return set()
    q = (
        select(Attempt.statement_id)
        .join(Verdict, Verdict.attempt_id == Attempt.id)
        .where(Verdict.status == VerdictStatus.PROVED, Attempt.statement_id.in_(ids))
        .distinct()
    )
    return set(session.scalars(q))


def verifier_versions(session: Session, run_id: int) -> list[tuple[str, str, bool]]:
    """Distinct (backend, version, sandboxed) of the verdicts of a run's checked attempts."""
    q = (
        select(Verdict.backend, Verdict.backend_version, Verdict.sandboxed)
        .join(Attempt, Attempt.id == Verdict.attempt_id)
        .where(Attempt.run_id == run_id, Verdict.backend != "")
        .distinct()
    )
    return [(b, v, bool(sb)) for b, v, sb in session.execute(q)]
