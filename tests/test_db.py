"""The proof database on SQLite and on the real PostgreSQL server (no mocks)."""

from __future__ import annotations

import json

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from typer.testing import CliRunner

from db import queries
from db.importer import BadInputError, import_benchmark, import_jsonl
from db.migrate import current_revision, downgrade, head_revision, upgrade
from db.models import Attempt, Base, Dataset, DatasetEntry, Statement, Verdict
from db.session import make_engine, session_scope


def test_migrations_upgrade_and_downgrade(db_url):
    engine = make_engine(db_url)
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {"datasets", "statements", "dataset_entries", "attempts", "verdicts", "conjectures",
            "checkpoints", "runs", "rounds"} <= tables
    assert {"statement_pass_rates", "statement_round_pass_rates", "unproved_statements"} <= set(
        inspect(engine).get_view_names()
    )
    # The migration creates exactly what the models declare.
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == []
    downgrade(engine)
    assert current_revision(engine) is None
    assert not set(inspect(engine).get_table_names()) - {"alembic_version"}
    upgrade(engine)  # and back up again
    assert current_revision(engine) == head_revision()
    engine.dispose()


def _counts(url):
    with session_scope(url) as s:
        return tuple(
            s.scalar(select(func.count()).select_from(m))
            for m in (Dataset, Statement, DatasetEntry)
        )


def test_benchmark_import_is_idempotent(db_url, shared_data):
    with session_scope(db_url) as s:
        first = import_benchmark(s, "minif2f", itp="coq")
    assert first.rows == 488 and first.new_statements == 488 and first.dataset_created
    counts = _counts(db_url)
    assert counts == (1, 488, 488)
    with session_scope(db_url) as s:
        again = import_benchmark(s, "minif2f", itp="coq")
    assert again.new_statements == 0 and again.new_entries == 0 and not again.dataset_created
    assert _counts(db_url) == counts
    with session_scope(db_url) as s:
        test_split = queries.dataset_statements(s, "minif2f-rocq", split="test")
    assert len(test_split) == 244
    assert all(r.formal_statement.startswith("Theorem") for r in test_split)


def test_lean_variants_share_identical_statements(db_url, shared_data):
    with session_scope(db_url) as s:
        a = import_benchmark(s, "minif2f", itp="lean", variant="deepseek-v4.9")
        b = import_benchmark(s, "minif2f", itp="lean", variant="goedel-v2")
    assert a.rows == 488 and b.rows == 244
    # Goedel's file embeds the header in the statement; we split it back out.
    with session_scope(db_url) as s:
        rows = queries.dataset_statements(s, "minif2f-lean4-goedel-v2", limit=3)
    assert all(r.header.startswith("import Mathlib") for r in rows)
    assert all(r.formal_statement.lstrip().startswith("theorem") for r in rows)


@pytest.mark.parametrize(
    "lines, needle",
    [
        (['{"name": "a", "header": "", "formal_statement": "Theorem a : True."}', "{not json"],
         ":2: malformed JSON"),
        (['{"name": "a", "header": ""}'], ":1: missing or empty field 'formal_statement'"),
        (['{"name": "a", "header": "", "formal_statement": "x", "itp": "isabelle"}'],
         ":1: unknown ITP 'isabelle'"),
        (['{"name": "a", "header": "", "formal_statement": "x"}',
          '{"name": "a", "header": "", "formal_statement": "y"}'], ":2: duplicate name 'a'"),
        (["[1, 2]"], ":1: expected a JSON object"),
    ],
)
def test_bad_input_names_file_and_line_and_writes_nothing(db_url, tmp_path, lines, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError) as err:
        with session_scope(db_url) as s:
            import_jsonl(s, path, itp="coq")
    assert str(path) in str(err.value) and needle in str(err.value)
    assert _counts(db_url) == (0, 0, 0)


def test_unknown_itp_option_is_rejected(db_url, tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"name": "a", "header": "", "formal_statement": "x"}\n')
    with pytest.raises(BadInputError, match="unknown ITP 'hol'"):
        with session_scope(db_url) as s:
            import_jsonl(s, path, itp="hol")


def _statement(s, name="t", statement="Theorem t : 1 = 1."):
    stmt, _ = queries.upsert_statement(s, itp="coq", name=name, header="", formal_statement=statement)
    return stmt


def _verdict(status):
    return {"status": status, "messages": [], "axioms": [], "seconds": 0.1, "backend": "coq",
            "backend_version": "8.16.1"}


def test_statement_identity_ignores_whitespace(db_url):
    with session_scope(db_url) as s:
        a, created_a = queries.upsert_statement(s, itp="coq", name="a", header="Require Arith.\n",
                                                formal_statement="Theorem a : 1 = 1.")
        b, created_b = queries.upsert_statement(s, itp="coq", name="b", header="Require  Arith.",
                                                formal_statement="Theorem a :\n  1 = 1.")
        c, created_c = queries.upsert_statement(s, itp="lean", name="a", header="Require Arith.\n",
                                                formal_statement="Theorem a : 1 = 1.")
    assert created_a and not created_b and a.id == b.id
    assert created_c and c.id != a.id


def test_attempt_insertion_is_idempotent(db_url):
    with session_scope(db_url) as s:
        sid = _statement(s).id
    rec = queries.AttemptRecord(key="run1/t/0", statement_id=sid, proof="Proof. auto. Qed.",
                                verdict=_verdict("proved"))
    with session_scope(db_url) as s:
        ids1 = queries.record_attempts(s, [rec])
    with session_scope(db_url) as s:
        ids2 = queries.record_attempts(s, [rec, rec])
    assert ids1 == ids2
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Attempt)) == 1
        assert s.scalar(select(func.count()).select_from(Verdict)) == 1
    # An attempt stored before its verdict gets the verdict on retry, once.
    bare = queries.AttemptRecord(key="run1/t/1", statement_id=sid, proof="Proof. lia. Qed.")
    with session_scope(db_url) as s:
        aid = queries.record_attempts(s, [bare])["run1/t/1"]
        queries.record_verdicts(s, {aid: _verdict("failed")})
        queries.record_verdicts(s, {aid: _verdict("proved")})
        view = queries.attempts_by_keys(s, ["run1/t/1"])["run1/t/1"]
    assert view.status == "failed"


def test_pass_rates_by_round_and_overall_with_multiplicity(db_url):
    with session_scope(db_url) as s:
        run = queries.get_or_create_run(s, "r", kind="selfplay")
        a = _statement(s, "a", "Theorem a : 1 = 1.").id
        b = _statement(s, "b", "Theorem b : 2 = 2.").id
        c = _statement(s, "c", "Theorem c : 3 = 3.").id
        recs = []
        # a: round 0 has 2 identical proved proofs + 2 failures; round 1 has 1 proved of 2
        for i, (proof, st) in enumerate([("p", "proved"), ("p", "proved"), ("q", "failed"),
                                         ("r", "timeout")]):
            recs.append(queries.AttemptRecord(f"a0-{i}", a, proof, run_id=run.id, round_index=0,
                                              verdict=_verdict(st)))
        for i, st in enumerate(["proved", "failed"]):
            recs.append(queries.AttemptRecord(f"a1-{i}", a, f"x{i}", run_id=run.id, round_index=1,
                                              verdict=_verdict(st)))
        recs += [queries.AttemptRecord(f"b-{i}", b, "z", run_id=run.id, round_index=0,
                                       verdict=_verdict("failed")) for i in range(3)]
        recs.append(queries.AttemptRecord("c-unverified", c, "w", run_id=run.id, round_index=0))
        queries.record_attempts(s, recs)
        run_id = run.id
    with session_scope(db_url) as s:
        overall = {r.name: (r.attempts, r.proved) for r in queries.pass_rates(s)}
        round0 = {r.name: r.pass_rate for r in queries.pass_rates(s, run_id=run_id, round_index=0)}
        never = {r.name for r in queries.never_proved(s)}
        attempts = queries.attempts_of_run(s, run_id, round_index=1)
        view_rows = s.execute(text(
            "SELECT name, attempts, proved FROM statement_pass_rates ORDER BY name")).all()
        round_view = s.execute(text(
            "SELECT statement_id, pass_rate FROM statement_round_pass_rates "
            "WHERE round_index = 0 ORDER BY statement_id")).all()
        unproved_view = {r[0] for r in s.execute(text("SELECT name FROM unproved_statements"))}
    assert overall == {"a": (6, 3), "b": (3, 0)}  # c has no verified attempt yet
    assert round0 == {"a": 0.5, "b": 0.0}
    assert never == {"b", "c"} == unproved_view
    assert [v.key for v in attempts] == ["a1-0", "a1-1"]
    assert [tuple(r) for r in view_rows] == [("a", 6, 3), ("b", 3, 0), ("c", 0, 0)]
    assert [float(r[1]) for r in round_view] == [0.5, 0.0]


def test_cli_upgrade_import_stats(db_url, shared_data, tmp_path):
    from workers.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["db", "upgrade", "--db", db_url])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "import", "minif2f", "--itp", "coq", "--db", db_url])
    assert r.exit_code == 0, r.output
    assert "488 new statements" in r.output
    r = runner.invoke(app, ["db", "stats", "--db", db_url])
    assert r.exit_code == 0 and "minif2f-rocq" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"name": "x"}) + "\n")
    r = runner.invoke(app, ["data", "import", str(bad), "--itp", "coq", "--db", db_url])
    assert r.exit_code == 2
    assert "bad.jsonl:1" in r.output.replace("\n", "")
