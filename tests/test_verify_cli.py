"""`prover verify`: jsonl in, verdicts out in input order, with the real Coq verifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workers.cli import app

RUNNER = CliRunner()
HEADER = "Require Import Arith.\n\n"
STATEMENT = "Theorem mathd_numbertheory_66 : 194 mod 11 = 7."


def squash(text: str) -> str:
    """CLI output without any whitespace (rich wraps long lines)."""
    return "".join(text.split())


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def row(id_, proof: str, **extra) -> dict:
    return {"id": id_, "header": HEADER, "statement": STATEMENT, "proof": proof, **extra}


def test_verdicts_in_input_order_and_proof_failures_exit_0(tmp_path):
    rows = [
        row("good", "Proof.\n  reflexivity.\nQed."),
        row(2, "Proof.\n  discriminate.\nQed."),  # an integer id comes back as an integer
        row("admitted", "Proof.\n  admit.\nAdmitted."),
        # an axiom smuggled in through the helpers proves anything: must not count
        row("axiom", "Proof.\n  apply cheat.\nQed.", helpers="Axiom cheat : forall P : Prop, P."),
        # closes the trusted theorem with an unrelated proof term
        row("mismatch", "Proof.\n  exact I.\nQed."),
        row("good-again", "Proof.\n  vm_compute.\n  reflexivity.\nQed."),
    ]
    src = write_jsonl(tmp_path / "in.jsonl", [*rows[:3], "", *rows[3:]])  # blank lines are skipped
    out = tmp_path / "deep" / "out.jsonl"
    res = RUNNER.invoke(app, ["verify", "--itp", "coq", "--input", str(src), "--output", str(out),
                              "--timeout", "20", "--workers", "2"])
    assert res.exit_code == 0, res.output
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == ["good", 2, "admitted", "axiom", "mismatch", "good-again"]
    status = {g["id"]: g["status"] for g in got}
    assert status["good"] == status["good-again"] == "proved"
    assert status[2] == "failed"
    for bad in ("admitted", "axiom", "mismatch"):
        assert status[bad] != "proved", got
    for g in got:
        assert {"id", "status", "messages", "axioms", "seconds"} <= set(g)
        assert isinstance(g["messages"], list) and isinstance(g["axioms"], list)
        assert g["seconds"] >= 0 and g["backend"] == "coq" and g["sandboxed"] is True
    assert got[1]["messages"] and "No applicable tactic" in got[1]["messages"][0]["text"]
    assert "6 proofs" in res.output and "proved 2" in res.output
    assert not [p for p in out.parent.iterdir() if p.name != "out.jsonl"]  # no temporary left

    # without --output the verdict rows go to stdout
    res = RUNNER.invoke(app, ["verify", "--itp", "coq", "--input",
                              str(write_jsonl(tmp_path / "one.jsonl", rows[:1])), "--timeout", "20"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [(x["id"], x["status"]) for x in lines] == [("good", "proved")]


@pytest.mark.parametrize(
    "lines,where,what",
    [
        ([row("a", "Proof. reflexivity. Qed."), '{"id": "b", "header": ', row("c", "x")],
         ":2:", "malformedJSON"),
        ([row("a", "Proof. reflexivity. Qed."), row("b", "y"),
          {"id": "c", "header": HEADER, "statement": STATEMENT}],
         ":3:", "missingfield'proof'"),
        ([["not", "an", "object"]], ":1:", "expectedaJSONobject"),
        ([row("a", 42)], ":1:", "field'proof'mustbeastring"),
        ([row(None, "Proof. Qed.")], ":1:", "field'id'mustbeastringoraninteger"),
    ],
)
def test_malformed_input_exits_2_naming_the_line_and_writes_nothing(tmp_path, lines, where, what):
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    res = RUNNER.invoke(app, ["verify", "--itp", "coq", "--input", str(src), "--output", str(out)])
    assert res.exit_code == 2, res.output
    msg = squash(res.output)
    assert f"in.jsonl{where}" in msg and what in msg
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_missing_input_and_bad_options_exit_2(tmp_path):
    out = tmp_path / "out.jsonl"
    res = RUNNER.invoke(app, ["verify", "--itp", "coq", "--input", str(tmp_path / "nope.jsonl"),
                              "--output", str(out)])
    assert res.exit_code == 2 and "nosuchfile" in squash(res.output) and not out.exists()
    src = write_jsonl(tmp_path / "in.jsonl", [row("a", "Proof. reflexivity. Qed.")])
    res = RUNNER.invoke(app, ["verify", "--itp", "isabelle", "--input", str(src)])
    assert res.exit_code == 2 and "expectedcoqorlean" in squash(res.output)
    res = RUNNER.invoke(app, ["verify", "--itp", "coq", "--input", str(src), "--workers", "0"])
    assert res.exit_code == 2 and not out.exists()
