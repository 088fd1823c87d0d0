"""Prompt formats, proof extraction and self-correction turns."""

from __future__ import annotations

import json
import re

import pytest

from prover.correction import INTRO, attempt_code, build_correction_turn, correction_conversation
from prover.extract import ExtractedProof, code_blocks, extract
from prover.prompts import FORMATS, get_format, list_formats
from verifier.types import Message

LEAN_HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\nopen BigOperators Real Nat Topology Rat\n\n"
STMT = "theorem mathd_algebra_10 (x : ℝ) (h₀ : 3 * x + 2 = 11) :\n    x = 3 := by\n"
COQ_HEADER = "Require Import Reals.\nRequire Import Lia.\nOpen Scope R_scope.\n\n"
COQ_STMT = "Theorem mathd_algebra_10 :\n  forall x : R, 3 * x + 2 = 11 -> x = 3."


def _rows(shared_data, name, n=3):
    with open(shared_data / "minif2f" / name) as f:
        return [json.loads(next(f)) for _ in range(n)]


# --------------------------------------------------------------------------- prompt formats


def test_registry():
    assert set(list_formats()) == {"deepseek-v1.5", "stp", "goedel-v2", "coq", "coq-chat"}
    assert get_format("DeepSeek-V1.5").name == "deepseek-v1.5"
    with pytest.raises(ValueError, match="unknown prompt format"):
        get_format("gpt")
    for f in FORMATS.values():
        assert f.kind in ("completion", "chat") and f.itp in ("lean", "coq")
        assert (f.stop == ("```",)) == (f.kind == "completion")


def test_deepseek_and_stp_prompts_on_minif2f(shared_data):
    for row in _rows(shared_data, "minif2f_lean4_v4.24.jsonl"):
        for name in ("deepseek-v1.5", "stp"):
            p = get_format(name).build(
                row["header"], row["formal_statement"], row["informal_prefix"]
            )
            assert p == (
                "Complete the following Lean 4 code:\n\n```lean4\n"
                + row["header"]
                + row["informal_prefix"]
                + row["formal_statement"]
            )
            assert p.endswith(":= by\n")
    bare = get_format("deepseek-v1.5").build("H\n", "theorem a : True := by\n", "Show it.")
    assert bare.endswith("```lean4\nH\n/-- Show it. -/\ntheorem a : True := by\n")
    odd = get_format("deepseek-v1.5").build("H\n", "theorem a : True := by\n", "x /- y -/ z")
    assert "/-- x / - y - / z -/\ntheorem a" in odd


def test_goedel_v2_prompt(shared_data):
    row = _rows(shared_data, "minif2f_lean4_v4.24.jsonl", 1)[0]
    conv = get_format("goedel-v2").build(row["header"], row["formal_statement"])
    assert len(conv) == 1 and conv[0]["role"] == "user"
    msg = conv[0]["content"]
    assert msg.startswith(
        "Complete the following Lean 4 code:\n\n```lean4\n"
        + row["header"]
        + row["formal_statement"]
        + "```\n\n"
    )
    assert "detailed proof plan" in msg and "intermediate lemmas" in msg


def test_coq_prompts(shared_data):
    for row in _rows(shared_data, "minif2f_rocq.jsonl"):
        p = get_format("coq").build(row["header"], row["formal_statement"])
        assert (
            p
            == "Complete the following Coq proof:\n\n```coq\n"
            + row["header"]
            + row["formal_statement"]
            + "\n"
        )
        conv = get_format("coq-chat").build(
            row["header"], row["formal_statement"], "Informal (*text*)."
        )
        msg = conv[0]["content"]
        assert (
            "```coq\n"
            + row["header"]
            + "(* Informal ( *text* ). *)\n"
            + row["formal_statement"]
            + "\n```"
            in msg
        )
        assert "Proof. ... Qed." in msg


# --------------------------------------------------------------------------- Lean extraction

DS = get_format("deepseek-v1.5")
GOEDEL = get_format("goedel-v2")


def test_completion_fenced():
    text = "  have h : 3 * x = 9 := by linarith\n  linarith\n```\n\nThis proof first isolates x."
    assert DS.extract(LEAN_HEADER, STMT, text) == ExtractedProof(
        "  have h : 3 * x = 9 := by linarith\n  linarith"
    )


def test_completion_unfenced_truncated_is_still_extracted():
    text = "  nlinarith [sq_nonneg (x - 3), sq_nonneg (x +"  # cut by max_tokens
    assert DS.extract(LEAN_HEADER, STMT, text).proof == text


def test_completion_stops_at_next_command_and_empty_is_none():
    text = "  linarith\n\ntheorem other : 1 = 1 := by rfl\n"
    assert DS.extract(LEAN_HEADER, STMT, text).proof == "  linarith"
    assert DS.extract(LEAN_HEADER, STMT, "\n  \n```") is None
    assert DS.extract(LEAN_HEADER, STMT, "  -- I give up\n```") is None
    assert DS.extract(LEAN_HEADER, STMT, "") is None


def test_chat_plan_and_two_code_blocks_takes_the_last_lean_block():
    answer = (
        "### Proof plan\n1. Subtract 2.\n2. Divide by 3.\n\n"
        "A first sketch:\n```lean4\ntheorem mathd_algebra_10 (x : ℝ) (h₀ : 3 * x + 2 = 11) :\n    x = 3 := by\n  sorry\n```\n\n"
        "Some arithmetic:\n```\n11 - 2 = 9\n```\n\n"
        "Final proof:\n```lean4\n"
        + LEAN_HEADER
        + STMT
        + "  have h₁ : 3 * x = 9 := by linarith\n  linarith\n```\n"
    )
    got = GOEDEL.extract(LEAN_HEADER, STMT, answer)
    assert got == ExtractedProof("  have h₁ : 3 * x = 9 := by linarith\n  linarith", "", False)


def test_chat_without_complete_block_is_none():
    assert GOEDEL.extract(LEAN_HEADER, STMT, "The answer is 3, by linarith.") is None
    truncated = "Plan: ...\n```lean4\n" + STMT + "  have h₁ : 3 * x = 9 := by linar"
    assert GOEDEL.extract(LEAN_HEADER, STMT, truncated) is None
    # an earlier complete block still counts when the last one is truncated
    earlier = "```lean4\n" + STMT + "  linarith\n```\nBetter:\n```lean4\n" + STMT + "  nlin"
    assert GOEDEL.extract(LEAN_HEADER, STMT, earlier).proof == "  linarith"


def test_chat_restated_different_statement_keeps_only_the_proof():
    answer = (
        "```lean4\nimport Mathlib\n\ntheorem mathd_algebra_10 (x : ℝ) (h₀ : 3 * x + 2 = 11) (extra : False) :\n"
        "    x = 3 := by\n  exact absurd extra id\n```"
    )
    got = GOEDEL.extract(LEAN_HEADER, STMT, answer)
    assert got.proof == "  exact absurd extra id" and got.statement_changed
    same = "```lean4\ntheorem  mathd_algebra_10  (x : ℝ)\n  (h₀ : 3 * x + 2 = 11) : x = 3 := by\n  linarith\n```"
    assert not GOEDEL.extract(LEAN_HEADER, STMT, same).statement_changed  # whitespace only


def test_chat_renamed_theorem_falls_back_to_last_declaration():
    answer = "```lean4\nlemma aux : (2 : ℝ) = 2 := rfl\n\ntheorem my_version (x : ℝ) (h₀ : 3 * x + 2 = 11) : x = 3 := by\n  linarith\n```"
    got = GOEDEL.extract(LEAN_HEADER, STMT, answer)
    assert got.proof == "  linarith" and got.statement_changed
    assert got.helpers == "lemma aux : (2 : ℝ) = 2 := rfl"


def test_chat_helpers_before_theorem_are_kept_without_preamble():
    answer = (
        "Plan: use a helper.\n\n```lean4\n"
        "import Mathlib\nimport Aesop\nset_option maxHeartbeats 400000\nopen BigOperators Real Nat Topology Rat\n\n"
        "/-- Linear equations have unique solutions. -/\n"
        "lemma lin_solve (a b c x : ℝ) (ha : a ≠ 0) (h : a * x + b = c) : x = (c - b) / a := by\n"
        "  field_simp\n  linarith\n\n"
        "def double (n : ℕ) : ℕ := 2 * n\n\n"
        "/-- The original problem: 3x + 2 = 11. -/\n"
        "theorem mathd_algebra_10 (x : ℝ) (h₀ : 3 * x + 2 = 11) :\n    x = 3 := by\n"
        "  have := lin_solve 3 2 11 x (by norm_num) h₀\n  norm_num at this\n  linarith\n\n"
        "#print axioms mathd_algebra_10\n```"
    )
    got = GOEDEL.extract(LEAN_HEADER, STMT, answer)
    assert (
        got.proof == "  have := lin_solve 3 2 11 x (by norm_num) h₀\n  norm_num at this\n  linarith"
    )
    assert got.helpers.startswith("/-- Linear equations have unique solutions. -/\nlemma lin_solve")
    assert "def double (n : ℕ) : ℕ := 2 * n" in got.helpers
    for dropped in ("import", "set_option", "open ", "The original problem", "#print"):
        assert dropped not in got.helpers
    assert not got.statement_changed


def test_lean_same_line_by_term_mode_and_lean_tag():
    one_line = "```lean\ntheorem mathd_algebra_10 (x : ℝ) (h₀ : 3 * x + 2 = 11) : x = 3 := by linarith\n```"
    assert GOEDEL.extract(LEAN_HEADER, STMT, one_line).proof == "  linarith"
    term = "```lean4\ntheorem mathd_algebra_10 (x : ℝ) (h₀ : 3 * x + 2 = 11) : x = 3 :=\n  by_contra fun h => h (by linarith)\n```"
    assert (
        GOEDEL.extract(LEAN_HEADER, STMT, term).proof
        == "  exact by_contra fun h => h (by linarith)"
    )
    # `:=` inside binders / comments does not end the signature
    tricky = (
        "```lean4\ntheorem mathd_algebra_10 (x : ℝ) (h₀ : 3 * x + 2 = 11) -- note: y := 3\n"
        "    (f : ℕ → ℕ := fun n => n) : x = 3 := by\n  linarith\n```"
    )
    assert GOEDEL.extract(LEAN_HEADER, STMT, tricky).proof == "  linarith"


def test_code_blocks_parser():
    blocks = code_blocks("a\n```lean4\nX\n```\nb\n```\nY\n```\n```coq\nZ")
    assert [(b.lang, b.code, b.closed) for b in blocks] == [
        ("lean4", "X", True),
        ("", "Y", True),
        ("coq", "Z", False),
    ]


# --------------------------------------------------------------------------- Coq extraction

COQ = get_format("coq")
COQ_CHAT = get_format("coq-chat")


def test_coq_chat_require_then_proof():
    answer = (
        "Plan: isolate x with lra.\n\n```coq\nRequire Import Reals.\nRequire Import Lia.\nRequire Import Lra.\n"
        "From Coq Require Import Psatz.\nOpen Scope R_scope.\n\n"
        "Lemma helper : forall y : R, y + 0 = y.\nProof. intros. ring. Qed.\n\n"
        "(* the main theorem *)\n"
        + COQ_STMT
        + "\nProof.\n  intros x H.\n  lra.\nQed.\n\nPrint Assumptions mathd_algebra_10.\n```"
    )
    got = COQ_CHAT.extract(COQ_HEADER, COQ_STMT, answer)
    # Requires already in the trusted header are dropped; the new ones come first, one a line
    assert (
        got.proof
        == "Require Import Lra.\nFrom Coq Require Import Psatz.\nProof.\n  intros x H.\n  lra.\nQed."
    )
    assert got.helpers == "Lemma helper : forall y : R, y + 0 = y.\nProof. intros. ring. Qed."
    assert not got.statement_changed


def test_coq_completion_continuation():
    text = "Proof.\n  intros x H.\n  lra.\nQed.\n```\nThis uses linear arithmetic."
    assert COQ.extract(COQ_HEADER, COQ_STMT, text) == ExtractedProof(
        "Proof.\n  intros x H.\n  lra.\nQed."
    )
    with_req = "Require Import Lra.\nProof.\n  intros; lra.\nQed.\nTheorem junk : True."
    assert (
        COQ.extract(COQ_HEADER, COQ_STMT, with_req).proof
        == "Require Import Lra.\nProof.\n  intros; lra.\nQed."
    )
    truncated = "Proof.\n  intros x H.\n  assert (3 * x = 9) by"
    # a proof never closed by Qed/Defined can only fail: no proof, no verifier call
    assert COQ.extract(COQ_HEADER, COQ_STMT, truncated) is None
    assert COQ.extract(COQ_HEADER, COQ_STMT, "  \n```") is None


def test_coq_bullets_braces_comments_and_admitted():
    text = "Proof.\n  intros x H. (* a comment with Qed. inside *)\n  split.\n  - lra.\n  - { lra. }\nDefined.\nQed."
    assert (
        COQ.extract(COQ_HEADER, COQ_STMT, text).proof
        == text[: text.index("Defined.") + len("Defined.")]
    )
    adm = COQ.extract(COQ_HEADER, COQ_STMT, "Proof.\n  intros.\nAdmitted.")
    assert adm.proof.endswith("Admitted.")  # kept: the verifier rejects it explicitly


def test_coq_chat_restated_statement_and_bare_proof():
    changed = (
        "```coq\nTheorem mathd_algebra_10 : forall x : R, x = 3.\nProof. intros. Admitted.\n```"
    )
    got = COQ_CHAT.extract(COQ_HEADER, COQ_STMT, changed)
    assert got.statement_changed and got.proof == "Proof. intros. Admitted."
    bare = "```coq\nProof.\n  intros; lra.\nQed.\n```"
    assert COQ_CHAT.extract(COQ_HEADER, COQ_STMT, bare).proof == "Proof.\n  intros; lra.\nQed."
    assert COQ_CHAT.extract(COQ_HEADER, COQ_STMT, "```coq\nCheck 1.\n```") is None
    assert COQ_CHAT.extract(COQ_HEADER, COQ_STMT, "no code") is None


def test_extract_dispatch_validation():
    with pytest.raises(ValueError):
        extract("isabelle", "chat", "", "", "")
    with pytest.raises(ValueError):
        extract("lean", "fim", "", "", "")


# --------------------------------------------------------------------------- self-correction

PROOF = "  have h₁ : 3 * x = 9 := by\n    linarith\n  nlinarith [sq_nonneg x]\n  simp\n  done"


def test_correction_turn_marks_error_in_place():
    code, offset = attempt_code(STMT, PROOF, header=LEAN_HEADER)
    assert code.split("\n")[offset] == PROOF.split("\n")[0]
    err = Message(
        "error",
        "linarith failed to find a contradiction",
        line=3,
        column=2,
        end_line=3,
        end_column=11,
    )
    turn = build_correction_turn(code, [err], proof_line_offset=offset)
    assert turn.startswith(INTRO)
    assert "  <error>nlinarith</error> [sq_nonneg x]" in turn
    assert "Error Message: linarith failed to find a contradiction" in turn
    excerpt = turn.split("```lean4\n")[1].split("\n```")[0].split("\n")
    # 4 lines before, the error line, 1 line after
    lines = code.split("\n")
    assert excerpt == [
        *lines[offset + 2 - 4 : offset + 2],  # 4 lines before
        "  <error>nlinarith</error> [sq_nonneg x]",
        "  simp",  # 1 line after
    ]
    assert "```lean4" in turn.split("Error Message")[-1]  # asks for a fenced corrected proof
    assert "Omitted" not in turn


def test_correction_multiline_span_cut_at_six_lines_and_no_end():
    code = "\n".join(f"line{i}" for i in range(1, 21))
    err = Message("error", "unsolved goals", line=5, column=2, end_line=15, end_column=3)
    turn = build_correction_turn(code, [err])
    excerpt = turn.split("```lean4\n")[1].split("\n```")[0].split("\n")
    assert excerpt == [
        "line1",
        "line2",
        "line3",
        "line4",
        "li<error>ne5",
        "line6",
        "line7",
        "line8",
        "line9",
        "line10</error>",
        "line11",
    ]
    no_end = build_correction_turn(code, [Message("error", "e", line=2, column=None)])
    assert "<error>line2</error>" in no_end


def test_correction_caps_at_eight_errors():
    code = "\n".join(f"  tac{i}" for i in range(12))
    errs = [Message("error", f"problem number {i}", line=i + 1, column=2) for i in range(11)]
    errs.append(Message("warning", "declaration uses 'sorry'", line=1, column=0))
    turn = build_correction_turn(code, errs)
    assert turn.count("<error>") == 1 + 8  # the intro names the tags once
    assert turn.count("Error Message:") == 8 and turn.count("Corresponding Code:") == 8
    assert "problem number 7" in turn and "problem number 8" not in turn
    assert "[Omitted 3 more errors]" in turn
    assert "sorry" not in turn  # warnings only when there are no errors
    warn_only = build_correction_turn(code, [errs[-1]])
    assert "declaration uses 'sorry'" in warn_only


def test_correction_outside_proof_and_coq():
    m = Message("error", "unknown identifier 'foo'", line=40, column=0, in_proof=False)
    turn = build_correction_turn("Proof.\n  lia.\nQed.", [m], itp="coq")
    assert turn.count("<error>") == 1 and "Corresponding Code" not in turn
    assert "Error Message: unknown identifier 'foo'" in turn
    assert "```coq block" in turn


def test_correction_conversation():
    conv = GOEDEL.build(LEAN_HEADER, STMT)
    prev = "Plan...\n```lean4\n" + STMT + PROOF + "\n```"
    code, offset = attempt_code(STMT, PROOF)
    err = Message("error", "simp made no progress", line=4, column=2, end_line=4, end_column=6)
    nxt = correction_conversation(conv, prev, [err], code=code, proof_line_offset=offset)
    assert [m["role"] for m in nxt] == ["user", "assistant", "user"]
    assert nxt[0] == conv[0] and nxt[0] is not conv[0] and nxt[1]["content"] == prev
    assert "  <error>simp</error>" in nxt[2]["content"]
    # completion formats: the completion is the proof, positions at offset 0
    again = correction_conversation(DS.build(LEAN_HEADER, STMT), PROOF, [err])
    assert again[0]["role"] == "user" and "  <error>simp</error>" in again[2]["content"]


# --------------------------------------------------------------------------- round trip on miniF2F


@pytest.mark.parametrize(
    ("fname", "itp"),
    [("minif2f_lean4_v4.24.jsonl", "lean"), ("minif2f_rocq.jsonl", "coq")],
)
def test_portfolio_round_trip_on_minif2f(shared_data, fname, itp):
    """Every format's prompt, answered by the portfolio, extracts back to the portfolio's proofs
    with the trusted statement recognized (the statement parser sees real statements)."""
    from prover.generation import SamplingParams, make_generator
    from prover.generation.portfolio import proofs_for

    with open(shared_data / "minif2f" / fname) as f:
        rows = [json.loads(line) for line in f][:120]
    # one Rocq row holds two theorems (the first ending in Admitted): not a usable statement
    rows = [
        r for r in rows if len(re.findall(r"(?m)^(?:Theorem|Lemma)\s", r["formal_statement"])) <= 1
    ]
    gen = make_generator("portfolio")
    for f in (f for f in FORMATS.values() if f.itp == itp):
        prompts = [
            f.build(r["header"], r["formal_statement"], r.get("informal_prefix")) for r in rows
        ]
        outs = (gen.chat if f.is_chat else gen.generate)(prompts, SamplingParams(n=2))
        for r, cs in zip(rows, outs):
            got = f.extract(r["header"], r["formal_statement"], cs[1].text)
            assert got is not None and not got.statement_changed, (f.name, r["name"])
            assert got.proof == proofs_for(itp, r["formal_statement"])[1]


def test_generate_proofs_with_portfolio():
    from prover.generation import SamplingParams, make_generator
    from prover.generation.portfolio import proofs_for
    from prover.prompts import Problem, generate_proofs

    assert DS.sampling(SamplingParams(stop=("QED",))).stop == ("```", "QED")
    assert GOEDEL.sampling(SamplingParams()) == SamplingParams()
    gen = make_generator("portfolio")
    problems = [Problem(LEAN_HEADER, STMT, "Solve 3x + 2 = 11."), Problem(LEAN_HEADER, STMT)]
    for fmt in ("deepseek-v1.5", GOEDEL):
        seen: list[int] = []
        out = generate_proofs(gen, fmt, problems, SamplingParams(n=2), progress=seen.append)
        assert sum(seen) == 2 and [len(a) for a in out] == [2, 2]
        assert [a.proof.proof for a in out[0]] == proofs_for("lean", STMT)[:2]
