"""Conjecturer: prompts, parsing, normalization, seeds, filters, relevance, training sets, store.

Pure functions are tested on hand-made records; database functions on a SQLite file with
hand-written verdicts (no proof assistant needed here; see test_conjecturer_coq.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sqlalchemy import select, text

from conjecturer import store
from conjecturer.dataset import (
    CorrectProof,
    SelectedConjecture,
    conjecturer_examples,
    proof_weight,
    prover_examples,
    write_dataset,
)
from conjecturer.filters import (
    Candidate,
    ProofStats,
    barely_provable,
    check_validity,
    decontaminate,
    dedup,
    elegance,
)
from conjecturer.pipeline import ConjectureConfig, build_training_sets, select_conjectures
from conjecturer.prompts import (
    HARD_END,
    alpha_key,
    conjecture_completion,
    conjecture_prompt,
    fresh_name,
    parse_conjecture,
)
from conjecturer.relevance import reweight, spread_weights
from conjecturer.scaffold import lean_goals_from_messages, lean_scaffolds, parse_lean_goals
from conjecturer.seeds import SeedCandidate, SeedProof, coq_lemmas, lean_lemmas, select_seeds
from db import queries
from db.models import Conjecture, Origin, Statement
from db.session import dispose_engines, session_scope

# ----------------------------------------------------------------------------- prompts


def test_prompt_shape_is_one_format_for_training_and_generation():
    p = conjecture_prompt("coq", "Nat.add_comm : forall n m : nat, n + m = m + n",
                          "Theorem t : 1 = 1.", "Proof. reflexivity. Qed.")
    assert p == ("<lemma>\nNat.add_comm : forall n m : nat, n + m = m + n\n<easy theorem>\n"
                 "Theorem t : 1 = 1.\nProof. reflexivity. Qed.\n<hard theorem>\n")
    # the empty placeholder lemma
    assert conjecture_prompt("lean", "", "theorem t : 1 = 1 := by\n", "  rfl").startswith(
        "<lemma>\ntheorem true : True\n<easy theorem>\ntheorem t : 1 = 1 := by\n  rfl\n")
    # a training completion parses back to the same statement (one format)
    parsed, why = parse_conjecture("coq", "Theorem a : forall n : nat, n = n.</hard theorem>")
    assert why == "ok"
    again, _ = parse_conjecture("coq", conjecture_completion(parsed.statement))
    assert again == parsed


def test_parse_lean_cuts_at_assign_renames_and_appends_by():
    out, why = parse_conjecture(
        "lean", "theorem foo (x : ℕ) (h : 0 < x) : x ≠ 0 := by\n  omega\n</hard theorem>\nrest")
    assert why == "ok"
    assert out.statement == f"theorem {out.name} (x : ℕ) (h : 0 < x) : x ≠ 0 := by\n"
    assert out.name == fresh_name("lean", out.statement)
    # same statement under another name and spacing: same fresh name
    out2, _ = parse_conjecture("lean", "lemma  bar (x:ℕ)   (h : 0 < x) : x ≠ 0 :=\n</hard theorem>")
    assert out2.name == out.name
    # no := and no end tag: truncated; end tag but no keyword: no statement
    assert parse_conjecture("lean", "theorem foo (x : ℕ) : x = x")[1] == "truncated"
    assert parse_conjecture("lean", "just words </hard theorem>")[1] == "no_statement"
    assert parse_conjecture("lean", "theorem s : sorry = 1 := by\n</hard theorem>")[1] == "forbidden"
    assert parse_conjecture("lean", "   ")[1] == "empty"


def test_parse_coq_takes_the_theorem_sentence():
    out, why = parse_conjecture(
        "coq", "(* a comment *) Lemma foo : forall n : nat,\n  n + 0 = n.\nProof.\n  lia.\nQed.\n"
               "</hard theorem>")
    assert why == "ok"
    assert out.statement == f"Theorem {out.name} : forall n : nat,\n  n + 0 = n."
    assert out.name.startswith("conj_")
    # a sentence that runs into Proof without a period is cut there
    out, _ = parse_conjecture("coq", "Theorem t : 1 = 1 Proof. reflexivity. Qed.</hard theorem>")
    assert out.statement == f"Theorem {out.name} : 1 = 1."
    assert parse_conjecture("coq", "Theorem t : 1 = 1")[1] == "truncated"
    out, _ = parse_conjecture("coq", "Theorem t : 1 = 1" + HARD_END)
    assert out.statement.endswith(": 1 = 1.")
    assert parse_conjecture("coq", "Definition x := 1.</hard theorem>")[1] == "no_statement"
    assert parse_conjecture("coq", "Theorem t : True. Admitted.</hard theorem>")[0] is not None
    assert parse_conjecture("coq", "Axiom t : False.</hard theorem>")[1] == "no_statement"


def test_alpha_key_renamed_and_respaced_statements_match():
    a = "Theorem t1 : forall (x y : R), x < y -> (x + 1 < y + 1)%R."
    b = "Lemma other:forall (u v:R),\n   u<v -> ( u+1 < v+1 )%R ."
    assert alpha_key("coq", a) == alpha_key("coq", b)
    # a free name is not a bound variable: renaming it changes the statement
    assert alpha_key("coq", "Theorem t : forall x : R, x < c.") != alpha_key(
        "coq", "Theorem t : forall x : R, x < d.")
    la = "theorem foo (a b : ℝ) (h₀ : a + b = 2) : a * b ≤ 1 := by\n"
    lb = "theorem  bar (x y:ℝ) (hyp : x+y = 2)\n  :  x*y ≤ 1 := by"
    assert alpha_key("lean", la) == alpha_key("lean", lb)
    assert alpha_key("lean", la) != alpha_key("lean", "theorem foo (a b : ℝ) (h : a + b = 2) : a * b ≤ 2 := by")
    # ∑ i in Finset.range n: only i is bound
    s1 = "theorem s (n : ℕ) : ∑ i in Finset.range n, i = n * (n - 1) / 2 := by"
    s2 = "theorem s (m : ℕ) : ∑ k in Finset.range m, k = m * (m - 1) / 2 := by"
    assert alpha_key("lean", s1) == alpha_key("lean", s2)
    assert "Finset.range" in alpha_key("lean", s1)


# ----------------------------------------------------------------------------- seeds


def test_lemma_names_from_proofs():
    st = "Theorem t : forall x y : R, 0 <= x -> x <= y -> x * x <= y * y."
    proof = ("Proof.\n intros x y H H0.\n apply Rmult_le_compat; try assumption.\n"
             " rewrite Nat.add_comm, <- (Z.mul_comm x) in H.\n apply H.\n"
             " pose proof (Rle_refl x) as Hr.\n exact Hr.\n nra using pow2_ge_0.\nQed.")
    assert coq_lemmas(st, proof) == ["Rmult_le_compat", "Nat.add_comm", "Z.mul_comm", "Rle_refl",
                                     "pow2_ge_0"]
    lst = "theorem t (a b : ℝ) (h₀ : 0 < a) : 0 ≤ (a - b) ^ 2 := by"
    lproof = ("  have h1 := sq_nonneg (a - b)\n  nlinarith [mul_pos h₀ h₀, h₀.le, Real.sqrt_nonneg a]\n"
              "  rw [Nat.succ_le_iff] at h1\n  norm_num")
    assert lean_lemmas(lst, lproof) == ["sq_nonneg", "mul_pos", "Real.sqrt_nonneg", "Nat.succ_le_iff"]
    assert coq_lemmas("Theorem t : 1 = 1.", "Proof. reflexivity. Qed.") == []


def _cand(sid, rate, proof="Proof. apply Nat.le_refl. Qed.", n=1):
    return SeedCandidate(sid, "coq", f"s{sid}", "", f"Theorem s{sid} : 1 <= 1.", rate,
                         tuple(SeedProof(100 * sid + i, proof) for i in range(n)))


def test_select_seeds_threshold_placeholder_cap_and_determinism():
    cands = [_cand(1, 0.35), _cand(2, 0.36), _cand(3, 1.0), _cand(4, 0.9, n=3)]
    seeds = select_seeds(cands, dataset_size=100, seed=7, empty_lemma_prob=0.0)
    assert sorted(s.statement_id for s in seeds) == [2, 3, 4]  # > 0.35, strictly
    assert all(s.lemma_name == "Nat.le_refl" and s.lemma == "Nat.le_refl" for s in seeds)
    assert select_seeds(cands, dataset_size=100, seed=7) == select_seeds(cands, dataset_size=100, seed=7)
    # probability 1 of the placeholder: every lemma empty
    assert all(s.lemma == "" for s in select_seeds(cands, dataset_size=100, empty_lemma_prob=1.0))
    # cap = 0.1 * 10 = 1 use per lemma: one seed gets it, the rest fall back to the placeholder
    capped = select_seeds(cands, dataset_size=10, empty_lemma_prob=0.0)
    assert sorted(s.lemma_name for s in capped) == ["", "", "Nat.le_refl"]
    # the resolver turns names into statements shown in the prompt
    res = select_seeds(cands, dataset_size=100, empty_lemma_prob=0.0,
                       resolve_lemma=lambda h, n: f"{n} : forall n, n <= n")
    assert res[0].lemma == "Nat.le_refl : forall n, n <= n"
    assert select_seeds([], dataset_size=0) == []
    # roughly half the seeds get the placeholder with the default probability
    many = [_cand(i, 0.9) for i in range(1, 201)]
    empty = sum(s.lemma == "" for s in select_seeds(many, dataset_size=10_000, seed=1))
    assert 70 < empty < 130


# ----------------------------------------------------------------------------- filters


def _c(i, statement, itp="coq"):
    return Candidate(i, itp, "", statement, f"c{i}", 1, None, "")


def test_dedup_against_known_and_each_other():
    known = ["Theorem known : forall n : nat, n + 0 = n."]
    items = [
        _c(0, "Theorem a : forall m : nat, m + 0 = m."),  # known, renamed
        _c(1, "Theorem b : forall n : nat, n * 1 = n."),
        _c(2, "Theorem c :  forall k:nat,\n k*1 = k ."),  # dup of 1
        _c(3, "Theorem d : forall n : nat, 1 * n = n."),
    ]
    r = dedup(items, itp="coq", existing=known)
    assert [c.index for c in r.kept] == [1, 3]
    assert [(c.index, why) for c, why in r.rejected] == [(0, "duplicate_of_known"),
                                                        (2, "duplicate_in_batch")]
    assert dedup([], itp="coq").kept == []


def test_check_validity_uses_the_check():
    class V:
        def __init__(self, ok):
            self.proved, self.reason = ok, None if ok else "statement_error"

    r = check_validity([_c(0, "a"), _c(1, "b")], lambda c: V(c.statement == "a"))
    assert [c.index for c in r.kept] == [0]
    assert r.rejected[0][1] == "invalid:statement_error"


def test_decontaminate_exact_and_ngram():
    evals = ["Theorem mathd_x : forall (a b : R), a + b = 2 -> a * b <= 1.",
             "Theorem long_one : forall (a b c d : nat), a + b + c + d = d + c + b + a /\\ a * b * c = c * b * a."]
    items = [
        _c(0, "Lemma  mine :forall (u v : R),u+v=2 -> u*v<=1 ."),  # renamed + re-spaced
        _c(1, "Theorem other : forall (a b : R), a * a + b * b >= 2 * a * b."),
        _c(2, "Theorem near : forall (a b c d : nat), a + b + c + d = d + c + b + a /\\ a * b * c = 0."),
    ]
    r = decontaminate(items, evals, itp="coq")
    assert [c.index for c in r.kept] == [1, 2]
    assert r.rejected[0][1] == "contaminated:exact"
    r = decontaminate(items, evals, itp="coq", ngram_n=5, ngram_threshold=0.7)
    assert [c.index for c in r.kept] == [1]
    assert sorted(why for _, why in r.rejected) == ["contaminated:exact", "contaminated:ngram"]
    assert decontaminate(items, [], itp="coq", ngram_threshold=0.5).kept == items


def test_decontamination_catches_renamed_minif2f_test_statement(shared_data):
    rows = [json.loads(line) for line in
            (shared_data / "minif2f" / "minif2f_rocq.jsonl").read_text().splitlines()]
    test_rows = [r for r in rows if r["split"] == "test"]
    evals = [r["formal_statement"] for r in test_rows]
    target = test_rows[3]["formal_statement"]
    name = target.split()[1]
    disguised = target.replace(name, "my_own_theorem", 1).replace("\n", "\n   ").replace(" : ", ":")
    assert disguised != target
    r = decontaminate([_c(0, disguised), _c(1, "Theorem fresh : forall n : nat, n = n.")],
                      evals, itp="coq")
    assert [c.index for c in r.kept] == [1]
    lrows = [json.loads(line) for line in
             (shared_data / "minif2f" / "minif2f_lean4_v4.24.jsonl").read_text().splitlines()]
    ltest = [r["formal_statement"] for r in lrows if r["split"] == "test"]
    lname = ltest[5].split()[1]
    ldis = ltest[5].replace(lname, "renamed_thm", 1).replace(" : ", " :  ")
    assert decontaminate([_c(0, ldis, "lean")], ltest, itp="lean").kept == []


def _ps(i, lemma="L", proved=1, attempts=8, slen=100, short=50):
    return ProofStats(i, 100 + i, lemma, slen, attempts, proved, short if proved else None)


def test_barely_provable_edges():
    stats = [_ps(1, proved=0), _ps(2, proved=1), _ps(3, proved=2), _ps(4, proved=3),
             _ps(5, proved=8), _ps(6, proved=1, attempts=7), _ps(7, proved=8, attempts=32)]
    r = barely_provable(stats)
    assert [s.id for s in r.kept] == [2, 3, 7]  # 1/8, 2/8 = 0.25 (inclusive), 8/32
    assert {s.id: why for s, why in r.rejected} == {
        1: "unproved", 4: "too_easy", 5: "too_easy", 6: "too_few_attempts"}
    assert barely_provable([]).kept == []
    assert barely_provable([_ps(i, proved=8) for i in range(3)]).kept == []  # all proved
    assert barely_provable([_ps(i, proved=0) for i in range(3)]).kept == []  # none proved


def test_elegance_drops_smallest_ratio_per_lemma_group():
    # group A: 5 members, ratios 0.1 .. 0.5 -> floor(0.2 * 5) = 1 dropped: the smallest
    a = [_ps(i, "A", short=10 * i) for i in range(1, 6)]
    # group B: a single member is kept whatever its ratio
    b = [_ps(10, "B", short=1)]
    # group C: 4 members -> floor(0.8) = 0 dropped
    c = [_ps(20 + i, "C", short=i) for i in range(4)]
    r = elegance(a + b + c)
    assert [s.id for s, _ in r.rejected] == [1]
    assert len(r.kept) == 9
    # ties: equal ratios -> the lower id is dropped, deterministically
    tie = [_ps(i, "T", short=30) for i in (7, 3, 9, 5, 4)]
    assert [s.id for s, _ in elegance(tie).rejected] == [3]
    assert [s.id for s, _ in elegance(list(reversed(tie))).rejected] == [3]
    # 10 members -> 2 dropped; ratio uses statement length
    g = [_ps(i, "G", slen=10 * i, short=50) for i in range(1, 11)]
    assert sorted(s.id for s, _ in elegance(g).rejected) == [9, 10]
    assert elegance([]).kept == []


# ----------------------------------------------------------------------------- relevance


def test_spread_weights_topk_cap_and_drop():
    conj = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=float)
    targets = np.array([[1, 0]] * 6 + [[0, 1]], dtype=float)
    w = spread_weights(conj, targets, top_k=1)
    assert list(w) == [4.0, 0.0, 1.0, 0.0]  # 6 picks capped at 4; unpicked -> 0
    w2 = spread_weights(conj, targets, top_k=2)
    assert list(w2) == [4.0, 4.0, 1.0, 0.0]
    # ties: equal similarity goes to the lower index
    assert list(spread_weights(np.array([[1, 0], [1, 0]]), np.array([[1, 0]]), top_k=1)) == [1, 0]
    assert list(spread_weights(conj, np.zeros((0, 2)))) == [1, 1, 1, 1]  # no targets: all kept
    res, weights = reweight(["a", "b", "c", "d"], conj, targets, top_k=1)
    assert res.kept == ["a", "c"] and weights == [4.0, 1.0]
    assert [x for x, _ in res.rejected] == ["b", "d"]


# ----------------------------------------------------------------------------- training sets


def _proof(sid, aid, proof, helpers=""):
    return CorrectProof(sid, aid, "coq", "Require Import Lia.\n", f"Theorem s{sid} : 1 = 1.", proof,
                        helpers)


def test_prover_examples_weights_worked_example():
    p10 = "Proof. lia. Qed"  # 15 chars
    p30 = "Proof.\n  intros.\n  lia.\nQed."
    proofs = [_proof(1, 1, p10), _proof(1, 2, p30), _proof(1, 3, p10),  # dup of attempt 1
              _proof(2, 4, p10),  # pass rate 0.75: excluded
              _proof(3, 5, p10, helpers="Lemma h : True. Proof. exact I. Qed.")]  # helpers: skipped
    ex = prover_examples(proofs, {1: 0.25, 2: 0.75, 3: 0.5}, round_index=4)
    assert [(e.statement_id, e.attempt_id) for e in ex] == [(1, 1), (1, 2)]
    assert ex[0].weight == pytest.approx(math.exp(-0.001 * 15) / 2)
    assert ex[1].weight == pytest.approx(math.exp(-0.001 * len(p30)) / 2)
    assert ex[0].prompt.startswith("Complete the following Coq proof:")
    assert ex[0].completion == p10 + "\n```"
    assert ex[0].round == 4 and ex[0].statement_ids == [1] and ex[0].role == "prover"
    # at most 16 per statement, the shortest; the weight divides by all 20 unique proofs
    many = [_proof(7, i, "Proof. " + "idtac. " * i + "lia. Qed.") for i in range(20)]
    ex = prover_examples(many, {7: 0.1})
    assert len(ex) == 16 and [e.attempt_id for e in ex] == list(range(16))
    assert ex[3].weight == pytest.approx(proof_weight(many[3].proof, 20))
    assert prover_examples([], {}) == []
    # a chat format keeps helpers in one fenced block
    ex = prover_examples([_proof(3, 5, p10, helpers="Lemma h : True. Proof. exact I. Qed.")],
                         {3: 0.0}, prompt_format="coq-chat")
    assert ex[0].completion.startswith("```coq\nLemma h") and json.loads(ex[0].prompt)[0]["role"] == "user"


def test_conjecturer_examples_and_write(tmp_path):
    from datasets import load_from_disk

    sel = [SelectedConjecture(9, 90, 1, 11, "coq", "Nat.add_comm", "Theorem s1 : 1 = 1.",
                              "Proof. reflexivity. Qed.", "Theorem conj_x : 2 = 2.", 2.5)]
    ex = conjecturer_examples(sel, round_index=3)
    assert ex[0].prompt == conjecture_prompt("coq", "Nat.add_comm", "Theorem s1 : 1 = 1.",
                                             "Proof. reflexivity. Qed.")
    assert ex[0].completion == "Theorem conj_x : 2 = 2.\n</hard theorem>"
    assert ex[0].weight == 2.5 and ex[0].statement_ids == [90, 1] and ex[0].conjecture_id == 9
    info = write_dataset(ex, tmp_path / "c")
    ds = load_from_disk(str(tmp_path / "c"))
    assert info["rows"] == 1 and ds[0]["completion"] == ex[0].completion and ds[0]["round"] == 3
    assert set(ds.column_names) >= {"prompt", "completion", "weight", "round", "statement_ids"}
    empty = write_dataset([], tmp_path / "e")
    assert empty["rows"] == 0 and len(load_from_disk(str(tmp_path / "e"))) == 0


# ----------------------------------------------------------------------------- Lean scaffolds


def test_lean_goal_states_become_statements_and_negations():
    msg = {"severity": "error", "text": "unsolved goals\ncase pos\nx y : ℕ\nh✝ : x = 1\n"
           "inst✝ : Fact (1 < 2)\nhlong : x +\n    y = 3\n⊢ x = x\n\ncase neg\nx : ℕ\n⊢ 1 = 1"}
    goals = lean_goals_from_messages([msg, {"severity": "warning", "text": "⊢ ignored"}])
    assert len(goals) == 2
    assert goals[0].hypotheses[0] == ("x y", "ℕ") and goals[0].hypotheses[3] == ("hlong", "x + y = 3")
    sub, neg = lean_scaffolds("import Mathlib\n", goals[0], parent_statement_id=1,
                              parent_attempt_id=2)
    assert sub.statement == (f"theorem {sub.name} (x y : ℕ) (h_0 : x = 1) [Fact (1 < 2)] "
                             "(hlong : x + y = 3) : x = x := by\n")
    assert neg.statement == (f"theorem {neg.name} : ¬ (∀ (x y : ℕ) (h_0 : x = 1) [Fact (1 < 2)] "
                             "(hlong : x + y = 3), x = x) := by\n")
    assert neg.origin == "scaffold-negation" and neg.subgoal_name == sub.name
    assert parse_lean_goals("linarith failed\n⊢ False")[0].target == "False"
    _, neg2 = lean_scaffolds("", goals[1], parent_statement_id=1, parent_attempt_id=2)
    assert neg2.statement.endswith(": ¬ (∀ (x : ℕ), 1 = 1) := by\n")


# ----------------------------------------------------------------------------- store and SQL

HEADER = "Require Import Arith.\n"


@pytest.fixture
def db(tmp_path):
    dispose_engines()
    yield f"sqlite:///{tmp_path}/t.db"
    dispose_engines()


def _verdict(ok):
    return {"status": "proved" if ok else "failed", "reason": None if ok else "error"}


def _stmt(s, name, origin=Origin.BENCHMARK, **kw):
    st, _ = queries.upsert_statement(s, itp="coq", name=name, header=HEADER,
                                     formal_statement=f"Theorem {name} : {kw.pop('body', '1 = 1')}.",
                                     origin=origin, **kw)
    return st


def _attempts(s, sid, run_id, rnd, proved, total, tag, proof_fn=lambda i: f"Proof. idtac {i}. Qed."):
    recs = [queries.AttemptRecord(key=f"{tag}/{sid}/{i}", statement_id=sid, proof=proof_fn(i),
                                  run_id=run_id, round_index=rnd, sample_index=i,
                                  verdict=_verdict(i < proved)) for i in range(total)]
    return queries.record_attempts(s, recs)


def test_store_selection_sql_and_training_sets(db_url, tmp_path):
    db = db_url
    with session_scope(db) as s:
        bench_run = queries.get_or_create_run(s, "bench", kind="eval")
        run = queries.get_or_create_run(s, "sp", kind="selfplay")
        seed = _stmt(s, "seed1", body="2 = 2")
        ids = _attempts(s, seed.id, bench_run.id, 0, 3, 4, "b",
                        lambda i: "Proof. apply Nat.eq_refl. Qed.")
        seed_attempt = min(ids.values())
        test_ds, _ = queries.get_or_create_dataset(s, name="bench", itp="coq", version="v1", source="x")
        evald = _stmt(s, "evalone", body="3 = 3")
        queries.add_dataset_entry(s, test_ds, evald, name="evalone", split="test")
        queries.add_dataset_entry(s, test_ds, seed, name="seed1", split="valid")
        _stmt(s, "target1", body="forall n : nat, n * 0 = 0")  # unsolved target
        cands = [Candidate(i, "coq", HEADER, f"Theorem conj{i} : {i + 10} = {i + 10}.", f"conj{i}",
                           seed.id, seed_attempt, "Nat.eq_refl" if i < 3 else "")
                 for i in range(5)]
        conj_ids = store.store_conjectures(s, cands, run_id=run.id, round_index=2)
        assert store.store_conjectures(s, cands[:1], run_id=run.id, round_index=2) == conj_ids[:1]
        rows = store.conjectures_of_round(s, run_id=run.id, round_index=2)
        # conj0: 1/8, conj1: 2/8, conj2: 3/8 (too easy), conj3: 0/8, conj4: 1/4 (too few)
        for c, (p, n) in zip(rows, [(1, 8), (2, 8), (3, 8), (0, 8), (1, 4)]):
            _attempts(s, c.statement_id, run.id, 2, p, n, "sp",
                      lambda i: "Proof. reflexivity. Qed." if i == 0 else f"Proof. auto {i}. Qed.")
        # the seed query: best pass rate 0.75 > 0.35, proofs deduplicated; eval split excluded
        seeds = store.seed_candidates(s, itp="coq")
        assert [(c.statement_id, c.best_pass_rate, len(c.proofs)) for c in seeds] == [(seed.id, 0.75, 1)]
        assert store.evaluation_statements(s, itp="coq") == [evald.formal_statement]
        assert [t for _, t in store.unsolved_targets(s, itp="coq")] == [
            "Theorem target1 : forall n : nat, n * 0 = 0."]
        run_id = run.id

    # links in the database: origin, parent, seed attempt, lemma, round
    with session_scope(db) as s:
        st = s.scalars(select(Statement).where(Statement.origin == Origin.CONJECTURE)).all()
        assert len(st) == 5 and {x.parent_statement_id for x in st} == {seed.id}
        assert {x.run_id for x in st} == {run_id} and {x.round_index for x in st} == {2}
        links = s.scalars(select(Conjecture).order_by(Conjecture.id)).all()
        assert [x.seed_attempt_id for x in links] == [seed_attempt] * 5
        assert [x.lemma for x in links] == ["Nat.eq_refl"] * 3 + [""] * 2

    def embed(texts):  # a deterministic stand-in for model embeddings
        return np.array([[1.0, len(t) % 7] for t in texts])

    weights, counts = select_conjectures(db, run_id=run_id, round_index=2, itp="coq",
                                         embedder=embed)
    assert sorted(weights) == conj_ids[:2] and all(w > 0 for w in weights.values())
    assert counts["barely_provable"] == 2 and counts["not_barely_provable"] == {
        "too_easy": 1, "unproved": 1, "too_few_attempts": 1}

    # the README query, as a user would run it
    with session_scope(db) as s:
        got = s.execute(text(store.BARELY_PROVABLE_SQL), {"run": "sp", "round": 2}).mappings().all()
        assert [r["conjecture"] for r in got] == ["conj0", "conj1"]
        assert {r["seed"] for r in got} == {"seed1"}
        assert [(r["attempts"], r["proved"]) for r in got] == [(8, 1), (8, 2)]
        assert got[0]["seed_statement"] == "Theorem seed1 : 2 = 2." and got[0]["lemma"] == "Nat.eq_refl"
        assert s.execute(text(store.BARELY_PROVABLE_SQL), {"run": "sp", "round": 1}).all() == []

    info = build_training_sets(db, run_id=run_id, round_index=2, out_dir=tmp_path / "out",
                               config=ConjectureConfig())
    # prover: unique correct proofs of statements with pass rate <= 0.5:
    # conj0 1, conj1 2, conj2 3 (3/8), conj4 1 (1/4)
    assert info["prover"]["rows"] == 7 and info["conjecturer"]["rows"] == 2
    assert info["prover"]["statements"] == 4
    from datasets import load_from_disk

    cj = load_from_disk(info["conjecturer"]["path"])
    assert cj[0]["prompt"] == conjecture_prompt("coq", "Nat.eq_refl", "Theorem seed1 : 2 = 2.",
                                                "Proof. apply Nat.eq_refl. Qed.")
    assert cj[0]["completion"] == "Theorem conj0 : 10 = 10.\n</hard theorem>"
    with session_scope(db) as s:
        assert store.training_sets_of_round(s, run_name="sp", round_index=2)["prover"]["rows"] == 7
        store.record_round_info(s, run_id=run_id, round_index=2, counts={"x": 1})
        store.record_round_info(s, run_id=run_id, round_index=2, counts={"y": 2})
        rnd = queries.get_or_create_round(s, s.get(queries.Run, run_id), 2)
        assert rnd.counts["conjecturer"] == {"x": 1, "y": 2}


def test_cli_command_is_a_typer_app():
    from typer.testing import CliRunner

    from conjecturer.cli import conjecture_app

    out = CliRunner().invoke(conjecture_app, ["--help"])
    assert out.exit_code == 0 and "--round" in out.output


def test_minif2f_statements_round_trip_through_the_conjecture_format(shared_data):
    """Every miniF2F statement written as a conjecture completion parses back to an
    alpha-equivalent statement, and no two distinct statements share an alpha key."""
    for itp, fname in (("coq", "minif2f_rocq.jsonl"), ("lean", "minif2f_lean4_v4.24.jsonl")):
        rows = [json.loads(line) for line in
                (shared_data / "minif2f" / fname).read_text().splitlines() if line.strip()]
        bad = []
        for r in rows:
            st = r["formal_statement"]
            parsed, _ = parse_conjecture(itp, conjecture_completion(st))
            if parsed is None or alpha_key(itp, parsed.statement) != alpha_key(itp, st):
                bad.append(r["name"])
        # one Coq entry holds two Theorem sentences; the first one is taken
        assert bad == ([] if itp == "lean" else ["imo_1966_p5"])
        assert len({alpha_key(itp, r["formal_statement"]) for r in rows}) == len(rows)
