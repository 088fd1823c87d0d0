"""Database scale benchmark: ingest attempts with verdicts, then the per-statement pass-rate query.

Inserts N attempts (default 1,000,000) with verdicts over 10,000 statements through the same
`db.queries.record_attempts` path the pipeline uses, on SQLite and on PostgreSQL, and times the
`db.queries.pass_rates` query. Targets (PostgreSQL): >= 50,000 attempts/s ingest, query < 2 s.

    python bench/db_scale.py [--rows N] [--pg URL] [--batch 20000]

Last line: `db_scale ingest_rows_per_s=<PostgreSQL> query_s=<PostgreSQL>`.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from rich.progress import Progress
from sqlalchemy import create_engine, text

from db import queries
from db.session import make_engine, session_scope
from db.migrate import upgrade

STATUSES = ["proved", "failed", "failed", "failed", "timeout", "rejected_unsound"]


def run(url: str, rows: int, statements: int, batch: int) -> tuple[float, float]:
    engine = make_engine(url)
    upgrade(engine)
    rng = random.Random(0)
    with session_scope(engine) as s:
        run_ = queries.get_or_create_run(s, "bench", kind="eval")
        ids = [
            queries.upsert_statement(s, itp="coq", name=f"s{i}", header="",
                                     formal_statement=f"Theorem s{i} : {i} = {i}.")[0].id
            for i in range(statements)
        ]
        run_id = run_.id
    verdict = {"messages": [], "axioms": [], "seconds": 0.05, "backend": "coq",
               "backend_version": "8.16.1"}
    t0 = time.perf_counter()
    with Progress(transient=True) as progress:
        task = progress.add_task(f"ingest {url.split(':')[0]}", total=rows)
        for start in range(0, rows, batch):
            recs = [
                queries.AttemptRecord(
                    key=f"bench/{i}", statement_id=ids[i % statements],
                    proof=f"Proof. tactic{i % 97}. Qed.", run_id=run_id, round_index=i % 4,
                    sample_index=i // statements,
                    verdict={**verdict, "status": STATUSES[rng.randrange(len(STATUSES))]},
                )
                for i in range(start, min(rows, start + batch))
            ]
            with session_scope(engine) as s:
                queries.record_attempts(s, recs, batch_size=batch)
            progress.advance(task, len(recs))
    ingest = rows / (time.perf_counter() - t0)
    with engine.begin() as conn:  # fresh planner statistics on both engines
        conn.execute(text("ANALYZE"))
    t0 = time.perf_counter()
    with session_scope(engine) as s:
        result = queries.pass_rates(s)
    query_s = time.perf_counter() - t0
    assert len(result) == statements and sum(r.attempts for r in result) == rows
    engine.dispose()
    return ingest, query_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--statements", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                    help="server URL; a scratch database is created and dropped on it")
    args = ap.parse_args()
    statements = min(args.statements, args.rows)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = run(f"sqlite:///{tmp}/bench.db", args.rows, statements, args.batch)
    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    name = "prover_bench_db_scale"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        results["postgresql"] = run(args.pg.rsplit("/", 1)[0] + "/" + name, args.rows,
                                    statements, args.batch)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(f"{'engine':<12}{'attempts':>10}{'ingest rows/s':>16}{'pass-rate query s':>20}")
    for engine, (ingest, q) in results.items():
        print(f"{engine:<12}{args.rows:>10}{ingest:>16,.0f}{q:>20.3f}")
    ingest, q = results["postgresql"]
    short = []
    if ingest < 50_000:
        short.append(f"ingest {ingest:,.0f} rows/s is below the 50,000 target")
    if q >= 2.0:
        short.append(f"query {q:.2f} s is above the 2 s target")
    print("targets met" if not short else "SHORT OF TARGET: " + "; ".join(short))
    print(f"db_scale ingest_rows_per_s={ingest:.0f} query_s={q:.3f}")


if __name__ == "__main__":
    main()
