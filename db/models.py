"""The proof database: typed SQLAlchemy 2.0 models.

Every statement, attempt, verdict, conjecture, checkpoint and round lands here, so questions
about a run are SQL queries. The schema is owned by the Alembic migrations in
``db/migrations``; these models must match them (a test checks that).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings with a CHECK constraint: portable, and readable from psql/sqlite3.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class Itp(str, enum.Enum):
    LEAN = "lean"
    COQ = "coq"


class Origin(str, enum.Enum):
    BENCHMARK = "benchmark"
    CONJECTURE = "conjecture"
    SCAFFOLD_SUBGOAL = "scaffold-subgoal"
    SCAFFOLD_NEGATION = "scaffold-negation"


class AttemptMode(str, enum.Enum):
    WHOLE_PROOF = "whole-proof"
    CORRECTION = "correction"


class VerdictStatus(str, enum.Enum):
    # Same values as verifier.types.Status (db/ is a leaf and does not import verifier/).
    PROVED = "proved"
    FAILED = "failed"
    TIMEOUT = "timeout"
    RESOURCE_LIMIT = "resource_limit"
    REJECTED_UNSOUND = "rejected_unsound"
    INTERNAL_ERROR = "internal_error"


class CheckpointStage(str, enum.Enum):
    BASE = "base"
    SFT = "sft"
    EXPERT_ITERATION = "expert-iteration"
    RL = "rl"
    AVERAGED = "averaged"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_datasets_name_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    itp: Mapped[Itp] = mapped_column(_enum(Itp, "itp"))
    # sha256 of the imported file: results on different files are never comparable.
    version: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)

    entries: Mapped[list[DatasetEntry]] = relationship(back_populates="dataset")


class Statement(Base):
    """A formal statement, unique per (itp, header, statement) up to whitespace."""

    __tablename__ = "statements"

    id: Mapped[int] = mapped_column(primary_key=True)
    itp: Mapped[Itp] = mapped_column(_enum(Itp, "itp"))
    name: Mapped[str] = mapped_column(String(300))
    header: Mapped[str] = mapped_column(Text)
    formal_statement: Mapped[str] = mapped_column(Text)
    informal: Mapped[str | None] = mapped_column(Text)
    norm_hash: Mapped[str] = mapped_column(String(64), unique=True)
    origin: Mapped[Origin] = mapped_column(_enum(Origin, "origin"), default=Origin.BENCHMARK)
    parent_statement_id: Mapped[int | None] = mapped_column(ForeignKey("statements.id"))
    # The failed attempt a scaffolded sub-goal was extracted from.
    parent_attempt_id: Mapped[int | None] = mapped_column(
        ForeignKey("attempts.id", use_alter=True, name="fk_statements_parent_attempt")
    )
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    round_index: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)

    __table_args__ = (Index("ix_statements_origin_round", "origin", "round_index"),)


class DatasetEntry(Base):
    """Membership of a statement in a dataset, with the dataset's own name and split."""

    __tablename__ = "dataset_entries"
    __table_args__ = (
        UniqueConstraint("dataset_id", "name", name="uq_dataset_entries_name"),
        Index("ix_dataset_entries_statement", "statement_id"),
        Index("ix_dataset_entries_split", "dataset_id", "split"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    statement_id: Mapped[int] = mapped_column(ForeignKey("statements.id"))
    name: Mapped[str] = mapped_column(String(300))
    split: Mapped[str] = mapped_column(String(50))
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    dataset: Mapped[Dataset] = relationship(back_populates="entries")
    statement: Mapped[Statement] = relationship()


class Run(Base):
    """An evaluation or a self-play run; rounds, attempts and checkpoints hang off it."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # "eval" | "selfplay" | "rl"
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(32), default="running")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_id", "index", name="uq_rounds_run_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The step the driver is in, so a killed driver resumes there.
    step: Mapped[str] = mapped_column(String(64), default="start")
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    base_model: Mapped[str | None] = mapped_column(Text)
    stage: Mapped[CheckpointStage] = mapped_column(_enum(CheckpointStage, "checkpoint_stage"))
    parent_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Conjecture(Base):
    """Links a conjectured statement to the seed it was conjectured from."""

    __tablename__ = "conjectures"

    id: Mapped[int] = mapped_column(primary_key=True)
    statement_id: Mapped[int] = mapped_column(ForeignKey("statements.id"), unique=True)
    seed_statement_id: Mapped[int] = mapped_column(ForeignKey("statements.id"))
    seed_attempt_id: Mapped[int | None] = mapped_column(ForeignKey("attempts.id"))
    lemma: Mapped[str] = mapped_column(Text, default="")
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    round_index: Mapped[int | None] = mapped_column(Integer)
    selected: Mapped[bool] = mapped_column(Boolean, default=False)
    weight: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (
        Index("ix_attempts_statement", "statement_id"),
        Index("ix_attempts_run_round", "run_id", "round_index"),
        Index("ix_attempts_proof_hash", "statement_id", "proof_hash"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Idempotency key: re-delivered work with the same key never adds a row.
    key: Mapped[str] = mapped_column(String(128), unique=True)
    statement_id: Mapped[int] = mapped_column(ForeignKey("statements.id"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    round_index: Mapped[int | None] = mapped_column(Integer)
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"))
    model: Mapped[str | None] = mapped_column(Text)
    mode: Mapped[AttemptMode] = mapped_column(
        _enum(AttemptMode, "attempt_mode"), default=AttemptMode.WHOLE_PROOF
    )
    correction_round: Mapped[int] = mapped_column(Integer, default=0)
    # For correction rounds: the attempt this one corrects (the chain's previous link).
    parent_attempt_id: Mapped[int | None] = mapped_column(ForeignKey("attempts.id"))
    sample_index: Mapped[int] = mapped_column(Integer, default=0)
    prompt: Mapped[str | None] = mapped_column(Text)
    completion: Mapped[str | None] = mapped_column(Text)
    proof: Mapped[str | None] = mapped_column(Text)
    # Lemmas the model wrote before the theorem; checked together with the proof.
    helpers: Mapped[str | None] = mapped_column(Text)
    proof_hash: Mapped[str | None] = mapped_column(String(64))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    sampling: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=_now, server_default=func.current_timestamp()
    )

    verdict: Mapped[Verdict | None] = relationship(back_populates="attempt", uselist=False)


class Verdict(Base):
    __tablename__ = "verdicts"
    __table_args__ = (Index("ix_verdicts_status", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    attempt_id: Mapped[int] = mapped_column(
        ForeignKey("attempts.id", ondelete="CASCADE"), unique=True
    )
    status: Mapped[VerdictStatus] = mapped_column(_enum(VerdictStatus, "verdict_status"))
    reason: Mapped[str | None] = mapped_column(String(200))
    messages: Mapped[list[Any]] = mapped_column(JSON, default=list)
    axioms: Mapped[list[Any]] = mapped_column(JSON, default=list)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    backend: Mapped[str] = mapped_column(String(32), default="")
    backend_version: Mapped[str] = mapped_column(String(200), default="")
    sandboxed: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=_now, server_default=func.current_timestamp()
    )

    attempt: Mapped[Attempt] = relationship(back_populates="verdict")
