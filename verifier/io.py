"""jsonl in and out for `prover verify`: validated before any work, written atomically."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from verifier.types import ProofTask, Verdict

REQUIRED = ("id", "header", "statement", "proof")


class BadRows(ValueError):
    """Malformed input; the message names the file and line."""


def read_rows(path: Path) -> tuple[list[ProofTask], list[Any]]:
    """The tasks of a jsonl file and each row's original `id` (a string or an integer, given
    back unchanged in the output). Every line is checked before anything is returned."""
    path = Path(path)
    if not path.is_file():
        raise BadRows(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise BadRows(f"{path}:{line}: not UTF-8 ({exc.reason})") from None
    tasks: list[ProofTask] = []
    ids: list[Any] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadRows(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise BadRows(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for key in REQUIRED:
            if key not in row:
                raise BadRows(f"{path}:{lineno}: missing field {key!r}")
        if isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)):
            raise BadRows(f"{path}:{lineno}: field 'id' must be a string or an integer")
        for key in ("header", "statement", "proof", "helpers"):
            if key in row and not isinstance(row[key], str):
                raise BadRows(f"{path}:{lineno}: field {key!r} must be a string")
        tasks.append(ProofTask(header=row["header"], statement=row["statement"],
                               proof=row["proof"], id=str(row["id"]),
                               helpers=row.get("helpers", "")))
        ids.append(row["id"])
    return tasks, ids


def read_tasks(path: Path) -> list[ProofTask]:
    return read_rows(path)[0]


def verdict_row(task: ProofTask, v: Verdict, row_id: Any = None) -> dict:
    d = v.to_dict()
    return {"id": task.id if row_id is None else row_id, "status": d["status"],
            "reason": d["reason"], "messages": d["messages"], "axioms": d["axioms"],
            "seconds": round(d["seconds"], 4), "backend": d["backend"],
            "backend_version": d["backend_version"], "sandboxed": d["sandboxed"]}


def write_verdicts(tasks: Sequence[ProofTask], verdicts: Sequence[Verdict], output: Path | None,
                   ids: Sequence[Any] | None = None) -> None:
    """Rows in input order; a file is written to a temporary name and renamed (never half)."""
    if len(verdicts) != len(tasks):
        raise ValueError(f"{len(verdicts)} verdicts for {len(tasks)} proofs")
    row_ids = list(ids) if ids is not None else [None] * len(tasks)
    lines = [json.dumps(verdict_row(t, v, i), ensure_ascii=False) + "\n"
             for t, v, i in zip(tasks, verdicts, row_ids)]
    if output is None:
        sys.stdout.writelines(lines)
        sys.stdout.flush()
        return
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(lines)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
