"""jsonl in and out for `prover verify`: validated before any work, written atomically."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from verifier.types import ProofTask, Verdict

REQUIRED = ("id", "header", "statement", "proof")


class BadRows(ValueError):
    """Malformed input; the message names the file and line."""


def read_tasks(path: Path) -> list[ProofTask]:
    if not Path(path).is_file():
        raise BadRows(f"{path}: no such file")
    tasks: list[ProofTask] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadRows(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise BadRows(f"{path}:{lineno}: expected a JSON object")
            for key in REQUIRED:
                if key not in row:
                    raise BadRows(f"{path}:{lineno}: missing field {key!r}")
            for key in ("header", "statement", "proof", "helpers"):
                if key in row and not isinstance(row[key], str):
                    raise BadRows(f"{path}:{lineno}: field {key!r} must be a string")
            tasks.append(ProofTask(header=row["header"], statement=row["statement"],
                                   proof=row["proof"], id=str(row["id"]),
                                   helpers=row.get("helpers", "")))
    return tasks


def verdict_row(task: ProofTask, v: Verdict) -> dict:
    d = v.to_dict()
    return {"id": task.id, "status": d["status"], "reason": d["reason"],
            "messages": d["messages"], "axioms": d["axioms"], "seconds": round(d["seconds"], 4),
            "backend": d["backend"], "backend_version": d["backend_version"],
            "sandboxed": d["sandboxed"]}


def write_verdicts(tasks: Sequence[ProofTask], verdicts: Sequence[Verdict], output: Path | None) -> None:
    """Rows in input order; a file is written to a temporary name and renamed (never half)."""
    lines = [json.dumps(verdict_row(t, v), ensure_ascii=False) + "\n" for t, v in zip(tasks, verdicts)]
    if output is None:
        sys.stdout.writelines(lines)
        return
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    os.replace(tmp, output)
