"""The checkpoint registry: every model the pipeline produces is a row in ``checkpoints``.

A thin layer over :func:`db.queries.register_checkpoint` that the trainers and the CLI share:

- paths are stored in one canonical form (absolute, resolved) so that the same directory is
  never registered twice under two spellings; a name that is not a local directory (a Hub id
  such as ``deepseek-ai/DeepSeek-Prover-V1.5-SFT``) is stored as given;
- parents may be given as checkpoint ids or as paths; a parent path that is not registered yet
  (typically the released base model a run starts from) is registered with stage ``base``, so
  the lineage of every trained checkpoint can be followed back to a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

STAGES = ("base", "sft", "expert-iteration", "rl", "averaged")


def canonical_path(path: str | Path) -> str:
    """Absolute resolved path for anything that exists locally; other names unchanged."""
    p = Path(path).expanduser()
    if p.exists():
        return str(p.resolve())
    return str(path)


@dataclass(frozen=True)
class CheckpointInfo:
    id: int
    path: str
    stage: str
    base_model: str | None
    parent_ids: list[int]
    data: dict[str, Any]
    metrics: dict[str, Any]


def _info(row: Any) -> CheckpointInfo:
    return CheckpointInfo(
        row.id, row.path, row.stage.value, row.base_model, list(row.parent_ids or []),
        dict(row.data or {}), dict(row.metrics or {}),
    )


def find_checkpoint(session: Session, path_or_id: str | int | Path) -> CheckpointInfo | None:
    from db.models import Checkpoint

    if isinstance(path_or_id, int):
        row = session.get(Checkpoint, path_or_id)
    else:
        row = session.scalars(
            select(Checkpoint).where(Checkpoint.path == canonical_path(path_or_id))
        ).one_or_none()
    return _info(row) if row is not None else None


def ensure_checkpoint(session: Session, path: str | Path, *, stage: str = "base") -> int:
    """The id of the checkpoint at ``path``, registering it (with ``stage``) when unknown."""
    from db.queries import register_checkpoint

    found = find_checkpoint(session, path)
    if found is not None:
        return found.id
    path_s = canonical_path(path)
    return register_checkpoint(session, path=path_s, stage=stage, base_model=path_s).id


def resolve_parents(session: Session, parents: Sequence[int | str | Path]) -> list[int]:
    """Checkpoint ids for parents given as ids or paths (unknown paths become ``base`` rows)."""
    ids: list[int] = []
    for p in parents:
        if isinstance(p, int) or (isinstance(p, str) and p.isdigit() and not Path(p).exists()):
            ids.append(int(p))
        else:
            ids.append(ensure_checkpoint(session, p))
    return list(dict.fromkeys(ids))


def register(
    session: Session,
    path: str | Path,
    *,
    stage: str,
    base_model: str | None = None,
    parents: Sequence[int | str | Path] = (),
    run: str | None = None,
    run_kind: str = "train",
    round_index: int | None = None,
    data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> int:
    """Register the checkpoint at ``path`` (or update its metrics when already registered);
    returns its id. ``run``: a run name (created with ``run_kind`` if new); ``round_index``
    attaches the checkpoint to that round of the run."""
    from db.queries import get_or_create_round, get_or_create_run, register_checkpoint

    if stage not in STAGES:
        raise ValueError(f"unknown checkpoint stage {stage!r}; choose one of {', '.join(STAGES)}")
    run_id = round_id = None
    if run:
        run_row = get_or_create_run(session, run, kind=run_kind)
        run_id = run_row.id
        if round_index is not None:
            round_id = get_or_create_round(session, run_row, round_index).id
    parent_ids = resolve_parents(session, parents)
    row = register_checkpoint(
        session,
        path=canonical_path(path),
        stage=stage,
        base_model=canonical_path(base_model) if base_model else None,
        parent_ids=parent_ids,
        run_id=run_id,
        round_id=round_id,
        data=data,
        metrics=metrics,
    )
    return row.id


def register_in_db(db: str | None, path: str | Path, **kw: Any) -> int:
    """:func:`register` in its own transaction on the database at URL ``db``
    (None: $PROVER_DB_URL, else the embedded SQLite file)."""
    from db.session import session_scope

    with session_scope(db) as session:
        return register(session, path, **kw)


def lineage(session: Session, path_or_id: str | int | Path) -> list[CheckpointInfo]:
    """The checkpoint and all its ancestors, breadth first (each once)."""
    start = find_checkpoint(session, path_or_id)
    if start is None:
        return []
    out, seen, queue = [], {start.id}, [start]
    while queue:
        ck = queue.pop(0)
        out.append(ck)
        for pid in ck.parent_ids:
            if pid not in seen:
                seen.add(pid)
                parent = find_checkpoint(session, int(pid))
                if parent is not None:
                    queue.append(parent)
    return out
