"""Lean backend: REPL protocol, source assembly, soundness ladder, warm process pool.

Without a Lean toolchain (none can be installed here) the backend runs against
``verifier.lean.standin``, a replay server answering with real REPL replies recorded in the
shared transcripts plus canned replies defined below. Tests marked ``lean`` use a real
toolchain: they run when ``lake`` is on PATH and PROVER_LEAN_PROJECT names a Mathlib project
with the REPL built, and are skipped otherwise.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from verifier.lean import protocol
from verifier.lean.backend import (
    LeanBackend,
    classify_axioms,
    followup_command,
    judge_replay,
    prefilter,
)
from verifier.lean.header import (
    StatementError,
    assemble,
    header_namespace,
    parse_statement,
    pool_key,
    qualified_name,
    scan,
    split_header,
)
from verifier.lean.protocol import Outcome
from verifier.lean.repl import ReplCrashed, ReplProcess, ReplTimeout
from verifier.lean.standin import StandIn, load_transcripts
from verifier.sandbox import Sandbox, SandboxUnavailable
from verifier.types import ProofTask, Status

ROOT = Path(__file__).resolve().parents[1]
HEADER = (
    "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\n"
    "open BigOperators Real Nat Topology Rat\n"
)
STANDIN_VERSION = "stand-in replay (no Lean)"


@pytest.fixture(scope="session")
def transcripts_dir(shared_data: Path) -> Path:
    d = shared_data / "lean-repl-transcripts"
    if not d.is_dir():
        pytest.fail(f"REPL transcripts not found at {d}")
    return d


@pytest.fixture(scope="session")
def transcripts(transcripts_dir: Path) -> list[tuple[str, list[dict], list[dict]]]:
    return load_transcripts(transcripts_dir)


def _pairs(shared: Path) -> list[str]:
    d = shared / "lean-repl-transcripts"
    if not d.is_dir():
        return []
    return sorted(
        p.name[: -len(".in")]
        for p in d.glob("*.in")
        if p.with_name(p.name[: -len(".in")] + ".expected.out").is_file()
    )


def _shared() -> Path:
    # collection-time twin of the ``shared_data`` fixture (parametrization needs the names)
    return Path(os.environ.get("PROVER_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()


# =========================================================================== protocol

# What the REPL meant by each reply of each transcript, in order (outcome:reason).
EXPECTED = {
    "all_tactics-20250622": ["complete", "complete"],
    "all_tactics": ["complete"],
    "app_type_mismatch": ["error:kernel", "incomplete:sorry", "incomplete:open_goals",
                          "incomplete:open_goals", "incomplete:metavariables"],
    "app_type_mismatch2": ["error:kernel", "incomplete:sorry", "incomplete:open_goals",
                           "incomplete:open_goals", "error:kernel", "incomplete:open_goals",
                           "error:error"],
    "assumption_proof": ["incomplete:sorry", "complete"],
    "by_cases": ["incomplete:sorry", "incomplete:open_goals", "incomplete:open_goals",
                 "incomplete:sorry"],
    "calc": ["incomplete:sorry"],
    "def_eval": ["complete", "complete"],
    "dup_msg": ["complete", "complete", "error:error"],
    "dup_sorries": ["incomplete:sorry", "incomplete:sorry"],
    "file": ["complete"],
    "file2": ["complete"],
    "file_env": ["complete", "complete", "complete"],
    "have_by_sorry": ["error:error", "incomplete:sorry", "incomplete:open_goals"],
    "import_lean": ["complete"],
    "incomplete": ["error:error", "error:error"],
    "infotree": ["complete"],
    "infotree_theorem": ["complete"],
    "invalid_line_break": ["error:error", "error:error"],
    "invalid_tactic": ["incomplete:sorry", "error:error"],
    "line_breaks": ["error:error", "incomplete:sorry", "complete"],
    "name_generator": ["incomplete:sorry", "incomplete:open_goals"]
    + ["incomplete:metavariables"] * 5 + ["error:error", "error:error"],
    "no_goal_sorry": ["error:error"],
    "no_goal_sorry_2": ["error:error"],
    "options": ["complete", "complete", "complete"],
    "pickle_environment": ["complete"] * 4,
    "pickle_environment_with_imports": ["complete"] * 5,
    "pickle_open": ["complete"] * 4,
    "pickle_open_2": ["complete", "complete"],
    "pickle_open_scoped": ["complete", "complete", "incomplete:sorry", "complete"],
    "pickle_open_scoped_2": ["complete", "incomplete:sorry"],
    "pickle_proof_state_1": ["complete", "incomplete:sorry"] + ["incomplete:open_goals"] * 5
    + ["complete"],
    "pickle_proof_state_2": ["incomplete:open_goals", "complete"],
    "pickle_proof_state_env": ["complete", "incomplete:sorry"] + ["incomplete:open_goals"] * 5
    + ["complete"],
    "proof_branching": ["incomplete:sorry"] + ["incomplete:open_goals"] * 3 + ["complete"],
    "proof_branching2": ["incomplete:sorry"] + ["incomplete:open_goals"] * 5 + ["complete"],
    "proof_step": ["incomplete:sorry", "incomplete:open_goals", "incomplete:open_goals",
                   "complete"],
    "proof_transitivity": ["incomplete:sorry", "complete", "incomplete:sorry", "complete"],
    "readme": ["incomplete:sorry", "incomplete:open_goals", "complete"],
    # rootGoals lists root goals as "sorries": not sorries; exact? succeeded
    "root_goals": ["complete", "complete", "complete"],
    "self_proof_apply_check": ["error:error", "incomplete:sorry", "error:kernel"],
    "self_proof_check": ["error:error", "incomplete:sorry", "error:error", "incomplete:sorry",
                         "error:error", "incomplete:sorry", "error:error", "incomplete:sorry",
                         "error:error"],
    "self_proof_exact_check": ["error:error", "incomplete:sorry", "error:kernel"],
    "self_proof_rw": ["error:error", "incomplete:sorry", "error:kernel"],
    "sorry_hypotheses": ["incomplete:sorry", "incomplete:open_goals"],
    "synthesize_placeholder": ["error:error"],
    "tactic_mode_sorry": ["incomplete:sorry", "incomplete:sorry"],
    "tactic_sorry": ["incomplete:sorry"],
    "term_sorry": ["incomplete:sorry"],
    "trace_simp": ["complete"] * 4 + ["incomplete:sorry", "incomplete:open_goals", "complete",
                                       "complete"],
    "unfinished_tactic_block": ["error:error"],
    "unknown_environment": ["repl_error:repl_error"],
    "unknown_proof_state": ["incomplete:sorry", "repl_error:repl_error"],
    "unknown_tactic": ["incomplete:sorry", "error:error"],
    "variables": ["complete", "complete", "incomplete:sorry"],
}


def test_every_transcript_pair_is_covered(transcripts):
    names = {name for name, _, _ in transcripts}
    assert names == set(_pairs(_shared()))
    assert names == set(EXPECTED), "classify every transcript"
    assert len(names) >= 50


@pytest.mark.parametrize("name", _pairs(_shared()))
def test_transcript_framing_replay_and_meaning(name, transcripts_dir):
    text_in = (transcripts_dir / f"{name}.in").read_text(encoding="utf-8")
    text_out = (transcripts_dir / f"{name}.expected.out").read_text(encoding="utf-8")
    requests = protocol.parse_requests(text_in)
    replies = protocol.parse_replies(text_out)
    assert len(requests) == len(replies) > 0
    # the stand-in, fed the raw .in file, answers exactly the recorded replies
    standin = StandIn(load_transcripts(transcripts_dir), [])
    out = io.StringIO()
    assert standin.serve(io.StringIO(text_in), out, io.StringIO()) == 0
    assert protocol.parse_replies(out.getvalue()) == replies
    # our incremental reader splits the same byte stream the same way, byte by byte
    reader = protocol.ReplyReader()
    got = []
    for b in out.getvalue().encode():
        reader.feed(bytes([b]))
        r = reader.pop()
        if r is not None:
            got.append(r)
    assert got == replies
    # and each reply is read as the REPL meant it
    meaning = []
    for req, rep in zip(requests, replies):
        it = protocol.interpret(rep, req)
        meaning.append(it.outcome.value + (f":{it.reason}" if it.reason else ""))
        if "cmd" in req and "env" in rep:
            assert it.kind == "command" and it.env == rep["env"]
    assert meaning == EXPECTED[name]


def test_standin_process_replays_a_transcript_over_pipes(transcripts_dir):
    text_in = (transcripts_dir / "proof_step.in").read_text(encoding="utf-8")
    p = subprocess.run(
        [sys.executable, "-m", "verifier.lean.standin", "--transcripts", str(transcripts_dir)],
        input=text_in, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )
    assert p.returncode == 0, p.stderr
    expected = (transcripts_dir / "proof_step.expected.out").read_text(encoding="utf-8")
    assert protocol.parse_replies(p.stdout) == protocol.parse_replies(expected)
    assert p.stdout.endswith("\n\n")


def test_standin_dies_on_malformed_json_like_the_repl(transcripts_dir):
    p = subprocess.run(
        [sys.executable, "-m", "verifier.lean.standin", "--transcripts", str(transcripts_dir)],
        input='{"cmd": "def f := 37"}\n\n{"cmd": oops\n\n{"cmd": "def g := 1"}\n\n',
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )
    assert p.returncode != 0
    assert "Could not parse JSON" in p.stderr
    assert len(protocol.parse_replies(p.stdout)) == 1


def test_raw_line_breaks_are_joined_like_the_repl_joins_them(transcripts_dir):
    reqs = protocol.parse_requests((transcripts_dir / "invalid_line_break.in").read_text())
    assert reqs[0]["cmd"] == "theorem foo : 1 = 1 := bysorry"
    reqs = protocol.parse_requests((transcripts_dir / "line_breaks.in").read_text())
    assert reqs[1]["cmd"] == "theorem foo : 1 = 1 := by\n  sorry"


def test_comment_blocks_are_skipped():
    assert protocol.parse_requests('-- hi\n\n{"cmd": "x"}\n\n# no\n\n') == [{"cmd": "x"}]


def test_encode_request_is_one_line_then_blank_line():
    data = protocol.encode_request(protocol.command("theorem a :\n  True := by\n\n  trivial", 3))
    text = data.decode()
    assert text.endswith("\n\n") and text.count("\n") == 2
    assert protocol.parse_requests(text) == [{"cmd": "theorem a :\n  True := by\n\n  trivial",
                                              "env": 3}]
    # a Unicode line separator stays inside the line (Lean splits lines on "\n" only)
    text = protocol.encode_request(protocol.command("a\u2028b")).decode()
    assert protocol.parse_requests(text) == [{"cmd": "a\u2028b"}]


def test_command_builder_only_builds_cmd_requests():
    assert protocol.command("x") == {"cmd": "x"}
    assert protocol.command("x", 0) == {"cmd": "x", "env": 0}
    for bad in (-1, True, "1"):
        with pytest.raises((ValueError, TypeError)):
            protocol.command("x", bad)  # type: ignore[arg-type]


def test_reader_rejects_garbage():
    r = protocol.ReplyReader()
    r.feed(b"uncaught exception: boom\n\n")
    with pytest.raises(protocol.ProtocolError):
        r.pop()


def _warning_only(text: str) -> dict:
    # what `admit` leaves: the warning, and no "sorries" entry
    return {"messages": [{"severity": "warning", "pos": {"line": 1, "column": 8},
                          "endPos": {"line": 1, "column": 11}, "data": text}], "env": 4}


@pytest.mark.parametrize("text", ["declaration uses `sorry`", "declaration uses 'sorry'"])
def test_sorry_warning_alone_is_incomplete(text):
    it = protocol.interpret(_warning_only(text))
    assert it.outcome is Outcome.INCOMPLETE and it.reason == "sorry" and it.has_sorry


def test_other_warnings_do_not_make_a_proof_incomplete():
    it = protocol.interpret(_warning_only("unused variable `h`"))
    assert it.outcome is Outcome.COMPLETE


@pytest.mark.parametrize(
    "status,outcome,reason",
    [
        ("Completed", Outcome.COMPLETE, None),
        ("Incomplete: open goals remain", Outcome.INCOMPLETE, "open_goals"),
        ("Incomplete: contains sorry", Outcome.INCOMPLETE, "sorry"),
        ("Incomplete: contains metavariable(s)", Outcome.INCOMPLETE, "metavariables"),
        ("Error: kernel type check failed: (kernel) declaration has free variables",
         Outcome.ERROR, "kernel"),
    ],
)
def test_proof_status_values(status, outcome, reason):
    it = protocol.interpret({"proofStatus": status, "proofState": 1, "goals": []})
    assert (it.kind, it.outcome, it.reason) == ("tactic", outcome, reason)


def test_have_by_sorry_keeps_the_sorry_flag(transcripts):
    reps = {n: r for n, _, r in transcripts}["have_by_sorry"]
    assert [protocol.interpret(r).has_sorry for r in reps] == [True, True, True]


def test_unknown_proof_status_is_a_protocol_error():
    with pytest.raises(protocol.ProtocolError):
        protocol.interpret({"proofStatus": "Maybe", "proofState": 1, "goals": []})


@pytest.mark.parametrize(
    "text,name,axioms",
    [
        ("'foo' depends on axioms: [propext, Classical.choice, Quot.sound]", "foo",
         ("propext", "Classical.choice", "Quot.sound")),
        ("'one_add_one' depends on axioms: [Lean.ofReduceBool,\n Lean.trustCompiler]",
         "one_add_one", ("Lean.ofReduceBool", "Lean.trustCompiler")),
        ("'contra' depends on axioms: [sorryAx]", "contra", ("sorryAx",)),
        ("'Nat.add' does not depend on any axioms", "Nat.add", ()),
    ],
)
def test_parse_axioms_message(text, name, axioms):
    rep = protocol.parse_axioms_message(text)
    assert rep is not None and rep.name == name and rep.axioms == axioms


def test_parse_axioms_message_rejects_other_text():
    assert protocol.parse_axioms_message("foo : Nat") is None


# =========================================================================== source text


def test_split_header_and_pool_key():
    parts = split_header(HEADER)
    assert parts.imports == ("import Aesop", "import Mathlib")
    assert parts.rest == "set_option maxHeartbeats 400000\n\nopen BigOperators Real Nat Topology Rat"
    other = "-- a comment\nimport Aesop\n/- block -/ import Mathlib\nimport Mathlib\nopen Real"
    assert pool_key(other) == pool_key(HEADER) == "import Aesop\nimport Mathlib"
    assert split_header("").imports == () and pool_key("") == ""
    assert split_header("open Nat").rest == "open Nat"


def test_header_namespace():
    assert header_namespace("open Real\nnamespace Foo.Bar\nsection\nend\n") == "Foo.Bar"
    assert header_namespace("namespace A\nend A") == ""


STMT = (
    "/-- doc -/\ntheorem mathd_algebra_478 (b h v : ℝ) (h₀ : 0 < b ∧ 0 < h ∧ 0 < v)\n"
    "    (h₁ : v = 1 / 3 * (b * h)) (h₂ : b = 30) (h₃ : h = 13 / 2) : v = 65 := by\n"
)


def test_parse_statement():
    s = parse_statement(STMT)
    assert (s.keyword, s.name, s.tail) == ("theorem", "mathd_algebra_478", "by")
    assert s.reference_command("R").startswith("theorem R (b h v : ℝ)")
    assert s.reference_command("R").endswith(": v = 65 := sorry")
    e = parse_statement("example (x : Nat) (h : (x : Int) = 1 := by simp) : x = x := by sorry")
    assert (e.keyword, e.name, e.tail) == ("example", None, "by sorry")
    assert parse_statement("lemma «odd name» : True :=").name == "«odd name»"
    assert parse_statement("@[simp] private theorem t : True").assign is None


@pytest.mark.parametrize(
    "bad",
    [
        "def f : Nat := 1",
        "theorem t : True := trivial",
        "theorem a : True := by\n  trivial\ntheorem b : True := by",
        "#eval 1\ntheorem t : True := by",
        "theorem t : True := by /- unclosed",
    ],
)
def test_parse_statement_rejects(bad):
    with pytest.raises(StatementError):
        parse_statement(bad)


def test_scan_nested_comments_strings_and_chars():
    text = "a /- x /- y -/ z -/ b -- c\n\"s--\" '\"' h' «x--y»"
    code = scan(text).code_only(text)
    assert code.split() == ["a", "b", "h'", "«x--y»"]
    assert scan("/- /- -/").unterminated_comment
    assert not scan("/- /- -/ -/").unterminated_comment


def test_assemble_plain_tactic_proof_and_positions():
    s = parse_statement(STMT)
    proof = "  norm_num [h₁, h₂, h₃]\n  linarith"
    a = assemble(s, proof, "g")
    assert a.body == STMT + proof
    assert not a.extracted
    # body line 4 is the proof's line 1; trusted text maps to the file
    assert a.map_position(4, 2) == (1, 2, True)
    assert a.map_position(5, 4) == (2, 4, True)
    assert a.map_position(2, 0) == (2, 0, False)
    assert a.untrusted == proof


def test_assemble_full_program_keeps_trusted_statement():
    s = parse_statement(STMT)
    proof = (
        "import Mathlib\nimport Aesop\nset_option maxHeartbeats 400000\n\n"
        "lemma helper : (1 : ℝ) = 1 := rfl\n\n"
        "theorem mathd_algebra_478 (b h v : ℝ) (h₀ : True) : v = 65 := by\n"
        "  norm_num [h₁, h₂, h₃]\n"
    )
    a = assemble(s, proof, "g", split_header(HEADER).imports)
    assert a.extracted and a.dropped_imports == ("Mathlib", "Aesop")
    assert "import" not in a.body
    assert "(h₀ : True)" not in a.body  # the model's restatement is discarded
    assert STMT.rstrip("\n").removesuffix(" by") in a.body
    assert a.body.endswith(" by\n  norm_num [h₁, h₂, h₃]\n")
    assert "lemma helper" in a.untrusted and "theorem" not in a.untrusted
    norm_line = a.body.split("\n").index("  norm_num [h₁, h₂, h₃]") + 1
    assert a.map_position(norm_line, 2) == (8, 2, True)


def test_assemble_foreign_import_is_kept_for_the_prefilter():
    s = parse_statement(STMT)
    proof = "import Evil\ntheorem mathd_algebra_478 : False := by\n  simp"
    a = assemble(s, proof, "g", ("import Mathlib",))
    hit = prefilter(a.untrusted)
    assert hit and hit.reason == "import_in_proof"


def test_assemble_example_gets_a_checkable_name():
    s = parse_statement("example (x : Nat) : x = x := by sorry")
    a = assemble(s, " rfl", "prover_goal_1")
    assert a.body.startswith("theorem prover_goal_1 (x : Nat) : x = x := by")
    assert "sorry" not in a.body
    assert qualified_name(s, "", "prover_goal_1") == "_root_.prover_goal_1"
    assert qualified_name(parse_statement(STMT), "Ns", "g") == "_root_.Ns.mathd_algebra_478"


def test_assemble_with_helpers_field():
    s = parse_statement("theorem t : 2 = 2 := by\n")
    a = assemble(s, "  exact two_eq", "g", (), helpers="lemma two_eq : 2 = 2 := rfl")
    assert a.body == "lemma two_eq : 2 = 2 := rfl\ntheorem t : 2 = 2 := by\n  exact two_eq"
    assert "two_eq : 2 = 2 := rfl" in a.untrusted
    assert a.map_position(3, 2) == (1, 2, True)
    assert a.map_position(1, 0)[2] is False  # helpers are reported against the file


# =========================================================================== prefilter


@pytest.mark.parametrize(
    "proof,status,reason",
    [
        ("  native_decide", Status.REJECTED_UNSOUND, "native_decide"),
        ("  decide +native", Status.REJECTED_UNSOUND, "native_decide"),
        ("set_option debug.skipKernelTC true in\n  simp", Status.REJECTED_UNSOUND, "kernel_bypass"),
        ("  simp\n#exit", Status.REJECTED_UNSOUND, "kernel_bypass"),
        ("  simp\nopen private foo in", Status.REJECTED_UNSOUND, "kernel_bypass"),
        ("  simp\n@[implemented_by g] def f := 1", Status.REJECTED_UNSOUND, "kernel_bypass"),
        ("  simp\n@[extern \"c\"] def f := 1", Status.REJECTED_UNSOUND, "kernel_bypass"),
        ("  simp\n#eval 1", Status.REJECTED_UNSOUND, "metaprogram"),
        ("  run_tac pure ()", Status.REJECTED_UNSOUND, "metaprogram"),
        ("  simp\nrun_cmd pure ()", Status.REJECTED_UNSOUND, "metaprogram"),
        ("  simp\nelab \"x\" : tactic => pure ()", Status.REJECTED_UNSOUND, "metaprogram"),
        ("  simp\nmacro \"x\" : tactic => `(tactic| rfl)", Status.REJECTED_UNSOUND,
         "metaprogram"),
        ("  simp\nnotation \"T\" => True", Status.REJECTED_UNSOUND, "metaprogram"),
        ("  simp\ninitialize pure ()", Status.REJECTED_UNSOUND, "metaprogram"),
        ("  simp\nunsafe def f := 1", Status.REJECTED_UNSOUND, "metaprogram"),
        ("  exact (Lean.Environment.empty).x", Status.REJECTED_UNSOUND, "metaprogram"),
        ("  simp\nopen Lean in def f := addDecl", Status.REJECTED_UNSOUND, "metaprogram"),
        ("  simp\nimport Mathlib", Status.REJECTED_UNSOUND, "import_in_proof"),
        ("  simp\naxiom cheat : False", Status.REJECTED_UNSOUND, "axiom_declaration"),
        ("  simp\n@[simp] private axiom cheat : False", Status.REJECTED_UNSOUND,
         "axiom_declaration"),
        ("  simp\n@[init foo] def f := 1", Status.REJECTED_UNSOUND, "metaprogram"),
        ("  simp\nattribute [tactic foo] f", Status.REJECTED_UNSOUND, "metaprogram"),
        ("  simp /- never closed", Status.REJECTED_UNSOUND, "unclosed_comment"),
        ("  exact?", Status.FAILED, "search_tactic"),
        ("  apply?", Status.FAILED, "search_tactic"),
    ],
)
def test_prefilter_rejects(proof, status, reason):
    hit = prefilter(proof)
    assert hit is not None and (hit.status, hit.reason) == (status, reason)


@pytest.mark.parametrize(
    "proof",
    [
        "  nlinarith [sq_nonneg (a - b), sq_nonneg (a + b)]",
        "  intro x hx\n  simp only [Finset.sum_range_succ] at hx ⊢\n  omega",
        "  -- a comment /- with -/ markers\n  decide",
        "  have h' : (2 : ℝ) ≠ 0 := by norm_num\n  field_simp\n  ring",
        "  rcases h with ⟨x, hx⟩\n  exact ⟨x, by simpa using hx⟩",
        "  simp [Nat.reduceMul]\n  exact extern_lemma",  # identifiers that merely contain words
        "  induction n with\n  | zero => simp\n  | succ k ih => exact List.init_eq k ih",
        "  obtain ⟨init, hinit⟩ := h\n  -- by the axiom of choice\n  exact hinit",
        "  simp\n\n#print axioms foo",
    ],
)
def test_prefilter_accepts_ordinary_proofs(proof):
    assert prefilter(proof) is None


def test_prefilter_native_decide_allowed():
    assert prefilter("  native_decide", allow_native_decide=True) is None


def test_classify_axioms():
    assert classify_axioms(["propext", "Classical.choice", "Quot.sound"]) is None
    assert classify_axioms([]) is None
    assert classify_axioms(["propext", "sorryAx"]) == (Status.FAILED, "sorry")
    native = ["propext", "Lean.ofReduceBool", "Lean.trustCompiler"]
    assert classify_axioms(native) == (Status.REJECTED_UNSOUND, "native_decide")
    assert classify_axioms(native, allow_native_decide=True) is None
    assert classify_axioms(["cheat"]) == (Status.REJECTED_UNSOUND, "axiom_not_allowed")


def test_followup_command_text():
    text = followup_command("prover_chk_1", "prover_ref_2", "_root_.foo")
    lines = text.split("\n")
    assert lines[0] == "set_option debug.skipKernelTC false in"
    assert lines[1] == "theorem _root_.prover_chk_1 : type_of% @_root_.prover_ref_2 := @_root_.foo"
    assert lines[2] == "#print axioms _root_.prover_chk_1"


def test_judge_replay_output():
    ok = json.dumps({"severity": "information", "pos": {"line": 9, "column": 0},
                     "data": "'prover_chk_1' depends on axioms: [propext]"})
    assert judge_replay(ok + "\n", "prover_chk_1", 9, False) is None
    forged = json.dumps({"severity": "information", "pos": {"line": 5, "column": 0},
                         "data": "'prover_chk_1' depends on axioms: [propext]"})
    assert judge_replay(forged + "\n", "prover_chk_1", 9, False)[0] is Status.INTERNAL_ERROR
    err = json.dumps({"severity": "error", "pos": {"line": 3, "column": 2}, "data": "boom"})
    assert judge_replay(err + "\n" + ok, "prover_chk_1", 9, False)[0] is Status.FAILED


# =========================================================================== backend + stand-in


def _msg(sev: str, line: int, text: str) -> dict:
    return {"severity": sev, "pos": {"line": line, "column": 0},
            "endPos": {"line": line, "column": 6}, "data": text}


def _axioms_rule(theorem: str, axioms: str) -> dict:
    return {
        "cmd_regex": r"theorem _root_\.(?P<chk>prover_chk_\w+) : type_of% @_root_\.prover_ref_\w+"
        r" := @_root_\." + theorem + r"\n#print axioms _root_\.(?P=chk)\Z",
        "reply": {"messages": [_msg("info", 3, "'\\g<chk>' " + axioms)], "env": "$env"},
    }


def _clean(theorem: str) -> dict:
    return {"cmd_regex": r"\Atheorem " + theorem + r"\b", "reply": {"env": "$env"}}


RULES = [
    # trusted setup: imports, header rest, reference statements
    {"cmd_regex": r"\A(import \S+\n?)*\Z", "reply": {"env": "$env"}},
    {"cmd_regex": r"\Aset_option maxHeartbeats 400000\n", "reply": {"env": "$env"}},
    {"cmd_regex": r"\Atheorem prover_ref_\w+ .*BROKEN", "reply": {
        "messages": [_msg("error", 1, "unknown identifier 'BROKEN'")], "env": "$env"}},
    {"cmd_regex": r"\Atheorem prover_ref_", "reply": {
        "sorries": [{"proofState": 0, "pos": {"line": 1, "column": 30}, "goal": "⊢ P",
                     "endPos": {"line": 1, "column": 35}}],
        "messages": [_msg("warning", 1, "declaration uses `sorry`")], "env": "$env"}},
    # process failures
    {"cmd_regex": "SLEEP_FOREVER", "action": "sleep"},
    {"cmd_regex": "CRASH_NOW", "action": "exit", "exit_code": 134,
     "stderr": "INTERNAL PANIC: out of memory"},
    {"cmd_regex": "GARBAGE_NOW", "action": "garbage", "text": "PANIC: not json at all"},
    # a proof that writes a forged "clean" reply to stdout before the real one
    {"cmd_regex": r"\Atheorem forged\b", "reply": {
        "$prefix_replies": [{"env": "$env"}],
        "messages": [_msg("error", 2, "unsolved goals")], "env": "$env"}},
    # proofs whose command is clean; the follow-up decides
    _clean("native_thm"), _clean("sorry_thm"), _clean("mismatch_thm"), _clean("evil_thm"),
    _clean("nonce_thm"),
    _axioms_rule("demo", "depends on axioms: [propext]"),
    _axioms_rule("native_thm", "depends on axioms: [propext, Lean.ofReduceBool, "
                 "Lean.trustCompiler]"),
    _axioms_rule("sorry_thm", "depends on axioms: [sorryAx]"),
    _axioms_rule("evil_thm", "depends on axioms: [cheat, propext]"),
    {"cmd_regex": r"@_root_\.mismatch_thm\n#print axioms", "reply": {"messages": [
        _msg("error", 2, "type mismatch\n  @mismatch_thm\nhas type\n  False → 1 = 1 : Prop\n"
             "but is expected to have type\n  1 = 1 : Prop"),
        _msg("error", 3, "unknown constant 'prover_chk'")], "env": "$env"}},
    # a follow-up answered for some other check theorem than the one we asked about
    {"cmd_regex": r"@_root_\.nonce_thm\n#print axioms", "reply": {"messages": [
        _msg("info", 3, "'prover_chk_0000' does not depend on any axioms")], "env": "$env"}},
]


def _sandbox(transcripts_dir: Path, tmp: Path) -> Sandbox:
    sb = Sandbox(ro_binds=(str(ROOT), sys.base_prefix, sys.prefix, str(transcripts_dir),
                           str(tmp)))
    try:
        sb.check()
    except SandboxUnavailable:  # pragma: no cover - only where bubblewrap cannot run
        return Sandbox(enabled=False)
    return sb


@pytest.fixture
def make_backend(tmp_path, transcripts_dir):
    made = []

    def make(rules=RULES, **kw) -> LeanBackend:
        proj = tmp_path / f"proj{len(made)}"
        proj.mkdir()
        rules_file = tmp_path / f"rules{len(made)}.json"
        rules_file.write_text(json.dumps(rules), encoding="utf-8")
        kw.setdefault("sandbox", _sandbox(transcripts_dir, tmp_path))
        kw.setdefault("version", STANDIN_VERSION)
        b = LeanBackend(
            project_dir=proj,
            repl_cmd=[sys.executable, "-m", "verifier.lean.standin",
                      "--transcripts", str(transcripts_dir), "--extra", str(rules_file)],
            repl_env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            **kw,
        )
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


DEMO = ProofTask(header=HEADER, statement="theorem demo (a b: Nat): a + b = b + a := by",
                 proof=" rw [Nat.add_comm]", id="demo")


def _task(name: str, proof: str = "  simp", statement: str | None = None) -> ProofTask:
    return ProofTask(header=HEADER, statement=statement or f"theorem {name} : 1 = 1 := by\n",
                     proof=proof)


def test_backend_proves_a_proof_with_a_clean_recorded_reply(make_backend):
    b = make_backend()
    v = b.verify_batch([DEMO], timeout=20)[0]
    assert v.status is Status.PROVED, v
    assert v.reason is None and v.axioms == ["propext"]
    assert v.backend == "lean" and v.backend_version == STANDIN_VERSION
    assert v.sandboxed is b.sandbox.enabled
    assert b.version() == STANDIN_VERSION


def test_backend_reuses_the_warm_process_and_its_environments(make_backend):
    b = make_backend()
    for _ in range(3):
        assert b.verify(DEMO, timeout=20).status is Status.PROVED
    assert b._pool.stats()["created"] == 1


def test_recorded_sorry_reply_fails(make_backend):
    b = make_backend()
    v = b.verify(_task("foo", " sorry", "theorem foo (x : Int) : x = x := by"), timeout=20)
    assert (v.status, v.reason) == (Status.FAILED, "sorry")
    (m,) = v.messages
    assert m.severity == "warning" and not m.in_proof
    assert m.line == len(HEADER.rstrip().split("\n")) + 2  # the statement's line in the file


def test_recorded_error_reply_fails_with_proof_relative_positions(make_backend):
    b = make_backend()
    # recorded: "theorem foo : 1 = 1 := by\nsorry" → parse error at the proof's line 2
    v = b.verify(_task("foo", "\nsorry", "theorem foo : 1 = 1 := by"), timeout=20)
    assert (v.status, v.reason) == (Status.FAILED, "error")
    in_proof = [m for m in v.messages if m.in_proof]
    assert [(m.line, m.column) for m in in_proof] == [(2, 0)]
    assert "unexpected token 'sorry'" in in_proof[0].text


def test_native_decide_axioms_rejected_unless_allowed(make_backend):
    v = make_backend().verify(_task("native_thm", "  decide"), timeout=20)
    assert (v.status, v.reason) == (Status.REJECTED_UNSOUND, "native_decide")
    assert "Lean.ofReduceBool" in v.axioms
    v = make_backend(allow_native_decide=True).verify(_task("native_thm", "  decide"), timeout=20)
    assert v.status is Status.PROVED


def test_native_decide_text_rejected_before_lean(make_backend):
    b = make_backend()
    v = b.verify(_task("native_thm", "  native_decide"), timeout=20)
    assert (v.status, v.reason) == (Status.REJECTED_UNSOUND, "native_decide")
    assert v.messages[0].in_proof and v.messages[0].line == 1
    assert b._pool.stats()["created"] == 0  # nothing was sent to a process


def test_sorry_axiom_fails(make_backend):
    v = make_backend().verify(_task("sorry_thm"), timeout=20)
    assert (v.status, v.reason) == (Status.FAILED, "sorry")


def test_other_axiom_rejected(make_backend):
    v = make_backend().verify(_task("evil_thm"), timeout=20)
    assert (v.status, v.reason) == (Status.REJECTED_UNSOUND, "axiom_not_allowed")


def test_type_mismatch_rejected(make_backend):
    v = make_backend().verify(_task("mismatch_thm"), timeout=20)
    assert (v.status, v.reason) == (Status.REJECTED_UNSOUND, "statement_mismatch")
    assert any("type mismatch" in m.text for m in v.messages)


def test_followup_about_another_check_theorem_is_not_believed(make_backend):
    v = make_backend().verify(_task("nonce_thm"), timeout=20)
    assert v.status is Status.INTERNAL_ERROR and v.reason == "followup_unreadable"


def test_forged_reply_on_stdout_is_a_protocol_error(make_backend):
    b = make_backend()
    v = b.verify(_task("forged"), timeout=20)
    assert v.status is Status.INTERNAL_ERROR and v.reason == "protocol_error"
    assert b.verify(DEMO, timeout=20).status is Status.PROVED


def test_broken_reference_statement_fails(make_backend):
    v = make_backend().verify(_task("x", "  simp", "theorem x : BROKEN = 1 := by"), timeout=20)
    assert (v.status, v.reason) == (Status.FAILED, "statement_error")


def test_unrecorded_proof_is_not_proved(make_backend):
    v = make_backend().verify(_task("nobody_recorded_this"), timeout=20)
    assert v.status is Status.INTERNAL_ERROR and v.reason == "repl_error"


def test_timeout_kills_and_restarts(make_backend):
    b = make_backend()
    assert b.verify(DEMO, timeout=20).proved
    t0 = time.monotonic()
    v = b.verify(_task("slow", "  simp -- SLEEP_FOREVER"), timeout=1.5)
    assert time.monotonic() - t0 < 1.5 + 2
    assert (v.status, v.reason) == (Status.TIMEOUT, "timeout")
    assert b.verify(DEMO, timeout=20).proved
    assert b._pool.stats()["created"] == 2


def test_crash_is_not_proved_and_the_next_proof_is_served(make_backend):
    b = make_backend()
    v = b.verify(_task("boom", "  simp -- CRASH_NOW"), timeout=20)
    assert v.status is Status.RESOURCE_LIMIT and v.reason == "repl_crashed"
    assert "out of memory" in v.messages[0].text
    assert b.verify(DEMO, timeout=20).proved


def test_garbage_output_is_an_internal_error_and_restarts(make_backend):
    b = make_backend()
    v = b.verify(_task("junk", "  simp -- GARBAGE_NOW"), timeout=20)
    assert (v.status, v.reason) == (Status.INTERNAL_ERROR, "protocol_error")
    assert b.verify(DEMO, timeout=20).proved
    assert b._pool.stats()["created"] == 2


def test_recycling_after_max_uses(make_backend):
    b = make_backend(max_uses=2)
    assert all(v.proved for v in b.verify_batch([DEMO] * 5, timeout=20))
    assert b._pool.stats()["created"] == 3


def test_recycling_on_memory_growth(make_backend):
    b = make_backend(max_rss_bytes=1)  # any process is over the limit after its first use
    assert all(v.proved for v in b.verify_batch([DEMO] * 2, timeout=20))
    assert b._pool.stats()["created"] == 2


def test_batch_keeps_input_order_with_two_processes(make_backend):
    b = make_backend(pool_size=2)
    tasks = [DEMO, _task("sorry_thm"), DEMO, _task("evil_thm")]
    got = [v.status for v in b.verify_batch(tasks, timeout=20)]
    assert got == [Status.PROVED, Status.FAILED, Status.PROVED, Status.REJECTED_UNSOUND]


def test_check_statement(make_backend):
    b = make_backend()
    # recorded: "theorem foo (x : Int) : x = x := by sorry" → only the sorry warning
    v = b.check_statement(HEADER, "theorem foo (x : Int) : x = x := by", timeout=20)
    assert v.status is Status.PROVED and v.messages == []
    # recorded: "theorem ex : False := by exact?" is caught by the prefilter already
    v = b.check_statement(HEADER, "theorem ex : False := by exact?", timeout=20)
    assert v.status is Status.FAILED
    v = b.check_statement(HEADER, "def f : Nat := 1", timeout=20)
    assert (v.status, v.reason) == (Status.FAILED, "bad_statement")
    v = b.check_statement(HEADER, "theorem t : True := by\n#eval 1", timeout=20)
    assert v.status is Status.REJECTED_UNSOUND


FAKE_LEAN = r"""
import json, re, sys
# stands in for `lean --json FILE`: reports the #print axioms lines, errors where asked
for i, line in enumerate(open(sys.argv[-1], encoding="utf-8").read().split("\n"), 1):
    m = re.match(r"#print axioms _root_\.(prover_chk_\w+)", line)
    if m:
        print(json.dumps({"severity": "information", "pos": {"line": i, "column": 0},
                          "data": f"'{m.group(1)}' depends on axioms: [propext]"}))
    if "REPLAY_FAILS" in line:
        print(json.dumps({"severity": "error", "pos": {"line": i, "column": 2},
                          "data": "fresh lean disagrees"}))
"""


def test_fresh_replay_step(make_backend, tmp_path):
    fake = tmp_path / "fake_lean.py"
    fake.write_text(FAKE_LEAN, encoding="utf-8")
    rules = [*RULES, _clean("replay_thm"), _axioms_rule("replay_thm", "depends on axioms: []")]
    b = make_backend(rules, fresh_replay=True, lean_cmd=[sys.executable, str(fake)])
    assert b.verify(DEMO, timeout=20).status is Status.PROVED
    v = b.verify(_task("replay_thm", "  simp -- REPLAY_FAILS"), timeout=20)
    assert (v.status, v.reason) == (Status.FAILED, "replay_error")
    assert v.messages[-1].text == "fresh lean disagrees"


def test_repl_process_wrapper_directly(transcripts_dir, tmp_path):
    sb = _sandbox(transcripts_dir, tmp_path)
    cmd = [sys.executable, "-m", "verifier.lean.standin", "--transcripts", str(transcripts_dir)]
    p = ReplProcess(cmd, cwd=tmp_path, sandbox=sb, env={"PYTHONPATH": str(ROOT)})
    try:
        _, it = p.run_command("def f := 2", None, 10)
        assert it.env == 0 and it.outcome is Outcome.COMPLETE
        _, it = p.run_command("#check f", 0, 10)
        assert it.env == 1 and it.messages[0].text == "f : Nat"
        assert p.alive() and p.rss_bytes() > 0
    finally:
        p.close()
    assert not p.alive()
    with pytest.raises(ReplCrashed):
        p.request({"cmd": "x"}, 1)


def test_repl_process_timeout_is_enforced(transcripts_dir, tmp_path):
    rules = tmp_path / "r.json"
    rules.write_text(json.dumps([{"cmd_regex": "zzz", "action": "sleep"}]))
    cmd = [sys.executable, "-m", "verifier.lean.standin", "--extra", str(rules)]
    p = ReplProcess(cmd, cwd=tmp_path, sandbox=_sandbox(transcripts_dir, tmp_path),
                    env={"PYTHONPATH": str(ROOT)})
    t0 = time.monotonic()
    with pytest.raises(ReplTimeout):
        p.run_command("zzz", None, 1.0)
    assert time.monotonic() - t0 < 3.0
    assert not p.alive()


# =========================================================================== real Lean

_LEAN_PROJECT = os.environ.get("PROVER_LEAN_PROJECT")
needs_lean = pytest.mark.skipif(
    not (shutil.which("lake") and _LEAN_PROJECT and Path(_LEAN_PROJECT).is_dir()),
    reason="needs `lake` on PATH and PROVER_LEAN_PROJECT naming a Mathlib project with the REPL",
)


@pytest.fixture(scope="module")
def real_lean():
    b = LeanBackend(project_dir=_LEAN_PROJECT, pool_size=1)
    yield b
    b.close()


LEAN_HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\nopen Real Nat\n"


@pytest.mark.lean
@needs_lean
def test_real_lean_ladder(real_lean):
    stmt = "theorem two_add_two : (2 : ℕ) + 2 = 4 := by\n"
    t = lambda proof, helpers="": ProofTask(LEAN_HEADER, stmt, proof, helpers=helpers)
    v = real_lean.verify(t("  norm_num"), timeout=120)
    assert v.status is Status.PROVED, v
    assert set(v.axioms) <= {"propext", "Classical.choice", "Quot.sound"}
    assert real_lean.verify(t("  sorry"), timeout=120).status is Status.FAILED
    assert real_lean.verify(t("  admit"), timeout=120).status is Status.FAILED
    assert real_lean.verify(t("  rfl\n  simp"), timeout=120).status is Status.FAILED
    # a hypothesis smuggled in through a section variable changes the theorem's type
    v = real_lean.verify(t("  exact absurd h id", "variable (h : False)\ninclude h"), timeout=120)
    assert v.status is Status.REJECTED_UNSOUND and v.reason == "statement_mismatch", v
    v = real_lean.verify(t("  norm_num", "axiom cheat : False"), timeout=120)
    assert v.status is Status.REJECTED_UNSOUND


@pytest.mark.lean
@needs_lean
def test_real_lean_check_statement(real_lean):
    ok = real_lean.check_statement(LEAN_HEADER, "theorem t (x : ℝ) : x ^ 2 ≥ 0 := by", timeout=120)
    assert ok.status is Status.PROVED, ok
    bad = real_lean.check_statement(LEAN_HEADER, "theorem t (x : ℝ) : x ^ 2 ≥ y := by",
                                    timeout=120)
    assert bad.status is Status.FAILED
