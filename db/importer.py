"""Benchmark import: a jsonl file (or a named benchmark) into the database, all or nothing.

Named benchmarks are read from the shared data directory when it exists (``$PROVER_DATA_DIR``,
else ``../shared/data`` beside the project) and otherwise downloaded from their upstream
repository at the pinned commit into ``~/.cache/selfplay-prover`` and checked against the
recorded sha256. Re-importing the same file changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db import queries

ITPS = ("lean", "coq")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "selfplay-prover"

@dataclass(frozen=True)
class Benchmark:
    name: str  # dataset name in the database
    itp: str
    relpath: str  # path under the shared data directory
    sha256: str
    upstream: str  # repo@commit:path, for provenance and reports
    url: str | None  # a direct download of this exact file, when upstream ships it as one


BENCHMARKS: dict[tuple[str, str, str], Benchmark] = {
    ("minif2f", "lean", "v4.24"): Benchmark(
        "minif2f-lean4-v4.24", "lean", "minif2f/minif2f_lean4_v4.24.jsonl",
        "4b4bedacc547f536d10ee812d327688559b32be60fe508d87cba63dd7409576a",
        "yangky11/miniF2F-lean4@5746b7d6c47855ce1294bed87329618ff7f1bc31:MiniF2F/{Valid,Test}",
        None,
    ),
    ("minif2f", "lean", "deepseek-v4.9"): Benchmark(
        "minif2f-lean4-deepseek-v4.9", "lean", "minif2f/minif2f_lean4_deepseek_v4.9.jsonl",
        "d6654c88476ff14db19d57dea25bd955a240525fb52171e460f89d98f83d7dd5",
        "deepseek-ai/DeepSeek-Prover-V1.5@2c4ba911:datasets/minif2f.jsonl",
        "https://raw.githubusercontent.com/deepseek-ai/DeepSeek-Prover-V1.5/2c4ba911/datasets/minif2f.jsonl",
    ),
    ("minif2f", "lean", "goedel-v2"): Benchmark(
        "minif2f-lean4-goedel-v2", "lean", "minif2f/minif2f_test_lean4_goedel_v2.jsonl",
        "47ca505cd60a503a77165e84bbf34c662f9a8c650d09fc33fb4c000179eee8f3",
        "Goedel-LM/Goedel-Prover-V2@2e9036e1:dataset/minif2f.jsonl",
        "https://raw.githubusercontent.com/Goedel-LM/Goedel-Prover-V2/2e9036e1/dataset/minif2f.jsonl",
    ),
    ("minif2f", "coq", "rocq"): Benchmark(
        "minif2f-rocq", "coq", "minif2f/minif2f_rocq.jsonl",
        "654966d91ab2f045277651a31d3a2a78dea9e02d76b9b22c0301a598010db3d9",
        "LLM4Rocq/miniF2F-rocq@b60affae5d9b81eb097424e3143c40165ccbe97b:{test,valid}/*.v",
        None,
    ),
    ("proofnet", "lean", "deepseek-v4.9"): Benchmark(
        "proofnet-lean4-deepseek-v4.9", "lean", "proofnet/proofnet_lean4_deepseek_v4.9.jsonl",
        "4a4d4fd69f45d6180830f12a73adb8a7e04915f651f3fa44a2877082fe252132",
        "deepseek-ai/DeepSeek-Prover-V1.5@2c4ba911:datasets/proofnet.jsonl",
        "https://raw.githubusercontent.com/deepseek-ai/DeepSeek-Prover-V1.5/2c4ba911/datasets/proofnet.jsonl",
    ),
}
DEFAULT_VARIANT = {("minif2f", "lean"): "v4.24", ("minif2f", "coq"): "rocq",
                   ("proofnet", "lean"): "deepseek-v4.9"}


class BadInputError(ValueError):
    """Bad benchmark input; the message names the file and line."""


def data_dir() -> Path:
    return Path(os.environ.get("PROVER_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))


def benchmark(name: str, itp: str, variant: str | None = None) -> Benchmark:
    if itp not in ITPS:
        raise BadInputError(f"unknown ITP {itp!r}; expected one of {', '.join(ITPS)}")
    variant = variant or DEFAULT_VARIANT.get((name, itp))
    bench = BENCHMARKS.get((name, itp, variant or ""))
    if bench is None:
        known = ", ".join(f"{n} --itp {i} --variant {v}" for n, i, v in BENCHMARKS)
        raise BadInputError(f"no benchmark {name!r} for itp {itp!r} variant {variant!r}; known: {known}")
    return bench


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def locate(bench: Benchmark) -> Path:
    """The benchmark file: shared data dir, else cache, else a verified download."""
    for candidate in (data_dir() / bench.relpath, CACHE / bench.relpath):
        if candidate.is_file():
            return candidate
    if bench.url is None:
        raise BadInputError(
            f"{bench.relpath} not found in {data_dir()} or {CACHE}. Upstream ships it as one file "
            f"per problem ({bench.upstream}); build the jsonl from that checkout and pass its path, "
            "or set PROVER_DATA_DIR to a directory holding it."
        )
    target = CACHE / bench.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    with urllib.request.urlopen(bench.url, timeout=120) as resp, open(tmp, "wb") as out:
        out.write(resp.read())
    got = sha256_file(tmp)
    if got != bench.sha256:
        tmp.unlink()
        raise BadInputError(f"checksum mismatch for {bench.url}: got {got}, expected {bench.sha256}")
    tmp.rename(target)
    return target


@dataclass(frozen=True)
class Row:
    name: str
    split: str
    header: str
    formal_statement: str
    informal: str | None
    extra: dict[str, Any]


_LEAN_DECL = re.compile(r"^(theorem|lemma|/--)", re.M)


def _split_lean_code(code: str) -> tuple[str, str]:
    """Split header (imports, options, opens) from the statement; drops a leading docstring."""
    m = _LEAN_DECL.search(code)
    if m is None:
        return "", code
    header, rest = code[: m.start()], code[m.start() :]
    if rest.startswith("/--"):
        end = rest.find("-/")
        rest = rest[end + 2 :].lstrip("\n") if end >= 0 else rest
    return header, rest


def parse_jsonl(path: Path, itp: str) -> list[Row]:
    """Validate every line first; any problem raises with file and line, nothing is written."""
    if itp not in ITPS:
        raise BadInputError(f"unknown ITP {itp!r}; expected one of {', '.join(ITPS)}")
    rows: list[Row] = []
    names: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise BadInputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            row_itp = obj.get("itp", itp)
            if row_itp not in ITPS:
                raise BadInputError(f"{where}: unknown ITP {row_itp!r} in field 'itp'")
            for fld in ("name", "formal_statement"):
                if not isinstance(obj.get(fld), str) or not obj[fld].strip():
                    raise BadInputError(f"{where}: missing or empty field {fld!r}")
            header, statement = obj.get("header"), obj["formal_statement"]
            if header is None and itp == "lean" and "import " in statement:
                header, statement = _split_lean_code(statement)
            if not isinstance(header, str):
                raise BadInputError(f"{where}: missing field 'header'")
            name = obj["name"]
            if name in names:
                raise BadInputError(f"{where}: duplicate name {name!r} (first on line {names[name]})")
            names[name] = lineno
            known = {"name", "split", "header", "formal_statement", "informal_prefix", "itp"}
            rows.append(
                Row(
                    name=name,
                    split=str(obj.get("split") or "test"),
                    header=header,
                    formal_statement=statement,
                    informal=obj.get("informal_prefix") or None,
                    extra={k: v for k, v in obj.items() if k not in known},
                )
            )
    if not rows:
        raise BadInputError(f"{path}: no rows")
    return rows


@dataclass(frozen=True)
class ImportResult:
    dataset: str
    version: str
    path: str
    rows: int
    new_statements: int
    new_entries: int
    dataset_created: bool


def import_jsonl(
    session: Session, path: Path, *, itp: str, dataset_name: str | None = None,
    source: str | None = None,
) -> ImportResult:
    """Import one jsonl file as one dataset version, in the caller's transaction."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    rows = parse_jsonl(path, itp)
    version = sha256_file(path)
    ds, created = queries.get_or_create_dataset(
        session, name=dataset_name or path.stem, itp=itp, version=version,
        source=source or str(path),
    )
    new_statements = new_entries = 0
    for row in rows:
        stmt, fresh = queries.upsert_statement(
            session, itp=itp, name=row.name, header=row.header,
            formal_statement=row.formal_statement, informal=row.informal,
        )
        new_statements += fresh
        new_entries += queries.add_dataset_entry(
            session, ds, stmt, name=row.name, split=row.split, extra=row.extra or None
        )
    return ImportResult(ds.name, version, str(path), len(rows), new_statements, new_entries, created)


def import_benchmark(
    session: Session, name: str, *, itp: str, variant: str | None = None
) -> ImportResult:
    bench = benchmark(name, itp, variant)
    path = locate(bench)
    if sha256_file(path) != bench.sha256:
        raise BadInputError(f"{path}: checksum differs from the pinned {bench.upstream}")
    return import_jsonl(session, path, itp=itp, dataset_name=bench.name, source=bench.upstream)
