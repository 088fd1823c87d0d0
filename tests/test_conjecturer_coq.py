"""Conjecturer against the real Coq backend (Coq 8.16): scaffolding on real failures, and
whole conjecture rounds (a tiny HF model on CPU; a scripted generator)."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import func, select, text

from conjecturer import store
from conjecturer.pipeline import ConjectureConfig, run_conjecture_round
from conjecturer.prompts import HARD_END, alpha_key, conjecture_completion, conjecture_prompt
from conjecturer.relevance import hf_embedder
from conjecturer.scaffold import extract_scaffolds
from db import queries
from db.models import Attempt, Conjecture, Origin, Statement, Verdict
from db.session import dispose_engines, session_scope
from prover.generation.base import Completion
from verifier.types import ProofTask

pytestmark = pytest.mark.skipif(shutil.which("coqtop") is None, reason="needs Coq (coqtop)")

HEADER = "Require Import Arith.\nRequire Import Lia.\n"
RHEADER = "Require Import Reals.\nRequire Import Lra.\nOpen Scope R_scope.\n"

# (name, split, statement, proof or None); solved ones get real, verified proofs
BENCH = [
    ("add_zero", "valid", "Theorem add_zero : forall n : nat, n + 0 = n.", "Proof.\n  intros; lia.\nQed."),
    ("add_comm2", "valid", "Theorem add_comm2 : forall a b : nat, a + b = b + a.",
     "Proof.\n  intros a b.\n  rewrite Nat.add_comm.\n  reflexivity.\nQed."),
    ("mul_le", "valid", "Theorem mul_le : forall a b c : nat, a <= b -> a * c <= b * c.",
     "Proof.\n  intros a b c H.\n  apply Nat.mul_le_mono_r.\n  exact H.\nQed."),
    ("hard_one", "valid", "Theorem hard_one : forall n : nat, 2 * n <> 1.", None),
    ("test_one", "test", "Theorem test_one : forall x y : nat, x + y + 0 = y + x.", None),
]
# a failed attempt at the unsolved statement: the first case closes, the second breaks
FAILED_PROOF = "Proof.\n  intros n.\n  destruct n.\n  - simpl. discriminate.\n  - foo.\nQed."


@pytest.fixture(scope="module")
def backend():
    import verifier

    b = verifier.get_backend("coq")
    yield b
    b.close()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model is faster on one thread, and far faster on a shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny Llama fitted for a few seconds on conjecture-format text (seed prompts followed
    by valid, known and ill-typed statements), so that some of its samples parse."""
    from prover.tiny import build_tiny_model

    solved = [(st, p) for _, _, st, p in BENCH if p]
    targets = [st for st, _ in solved] + [
        "Theorem extra1 : forall n : nat, n * 1 = n.",
        "Theorem extra2 : forall a b : nat, a * b = b * a.",
        "Theorem bad : forall n : nat, n + true = n.",
    ]
    corpus = [conjecture_prompt("coq", "", st, p) + conjecture_completion(t)
              for st, p in solved for t in targets]
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), corpus=corpus, seed=0,
                                train_steps=120, train_seq_len=64))


@pytest.fixture
def db(tmp_path):
    dispose_engines()
    yield f"sqlite:///{tmp_path}/t.db"
    dispose_engines()


def _setup(db, backend, *, run_name="sp", round_index=1):
    """Benchmark rows, verified seed proofs (run "bench"), and a failed attempt at the unsolved
    statement in the self-play run's round. Returns {name: statement id}."""
    ids = {}
    with session_scope(db) as s:
        ds, _ = queries.get_or_create_dataset(s, name="mini", itp="coq", version="1", source="test")
        bench = queries.get_or_create_run(s, "bench", kind="eval")
        run = queries.get_or_create_run(s, run_name, kind="selfplay")
        recs = []
        for name, split, st, proof in BENCH:
            row, _ = queries.upsert_statement(s, itp="coq", name=name, header=HEADER,
                                              formal_statement=st)
            queries.add_dataset_entry(s, ds, row, name=name, split=split)
            ids[name] = row.id
            if proof:
                v = backend.verify_batch([ProofTask(HEADER, st, proof)], timeout=60)[0]
                assert v.proved, (name, v)
                recs += [queries.AttemptRecord(key=f"bench/{name}/{i}", statement_id=row.id,
                                               proof=proof, run_id=bench.id, round_index=0,
                                               sample_index=i, verdict=v.to_dict())
                         for i in range(2)]
        st = BENCH[3][2]
        v = backend.verify_batch([ProofTask(HEADER, st, FAILED_PROOF)], timeout=60)[0]
        assert not v.proved
        recs.append(queries.AttemptRecord(key="sp/hard/0", statement_id=ids["hard_one"],
                                          proof=FAILED_PROOF, run_id=run.id,
                                          round_index=round_index, verdict=v.to_dict()))
        queries.record_attempts(s, recs)
    return ids


# ----------------------------------------------------------------------------- scaffolding


def test_scaffolding_real_coq_failure_yields_checked_subgoals_and_negations(backend):
    st = "Theorem t : forall x y : R, 0 <= x -> x <= y -> x * x <= y * y."
    proof = ("Proof.\n  intros x y H1 H2.\n  assert (0 <= y) by lra.\n"
             "  apply Rmult_le_compat.\n  - lra.\n  - exact foo.\nQed.")
    v = backend.verify_batch([ProofTask(RHEADER, st, proof)], timeout=60)[0]
    assert v.status.value == "failed"
    fa = store.FailedAttempt(7, 3, "coq", RHEADER, st, proof, v.status.value,
                             [m.__dict__ for m in v.messages])
    scaffolds = extract_scaffolds(fa, backend)
    subs = [x for x in scaffolds if x.origin == "scaffold-subgoal"]
    negs = [x for x in scaffolds if x.origin == "scaffold-negation"]
    assert subs and len(subs) == len(negs)
    # the goals open at the failure point, hypotheses included, as closed statements
    bodies = {x.statement.split(" : ", 1)[1] for x in subs}
    # (the second bullet works on the second goal of Rmult_le_compat: 0 <= x)
    assert bodies == {"forall x y : R, 0 <= x -> x <= y -> 0 <= y -> 0 <= x."}
    for x in scaffolds:
        assert x.parent_attempt_id == 7 and x.parent_statement_id == 3
        assert backend.check_statement(RHEADER, x.statement, timeout=60).proved, x.statement
    for sub, neg in zip(subs, negs):
        assert neg.subgoal_name == sub.name
        assert neg.statement == f"Theorem {neg.name} : ~ ({sub.statement.split(' : ', 1)[1][:-1]})."
    # a proof that fails at its first tactic leaves the statement itself open
    v = backend.verify_batch([ProofTask(RHEADER, st, "Proof.\n  exact bar.\nQed.")], timeout=60)[0]
    fa2 = store.FailedAttempt(8, 3, "coq", RHEADER, st, "Proof.\n  exact bar.\nQed.", "failed",
                              [m.__dict__ for m in v.messages])
    got = extract_scaffolds(fa2, backend)
    assert alpha_key("coq", got[0].statement) == alpha_key("coq", st)


def test_coq_lemma_names_resolve_to_statements(backend):
    from conjecturer.seeds import coq_lemma_resolver

    resolve = coq_lemma_resolver(backend)
    assert resolve(HEADER, "Nat.mul_le_mono_r") == (
        "Nat.mul_le_mono_r : forall n m p : nat, n <= m -> n * p <= m * p")
    assert resolve(HEADER, "no_such_lemma") is None
    assert resolve(HEADER, "x. Abort") is None


# ----------------------------------------------------------------------------- end to end


def test_round_with_tiny_hf_model_keeps_the_books(db, backend, tiny_model, tmp_path):
    from prover.generation import make_generator

    ids = _setup(db, backend)
    gen = make_generator("hf", model=tiny_model)
    cfg = ConjectureConfig(conjectures_per_seed=3, max_tokens=40, prove_samples=8,
                           prove_max_tokens=24, verify_timeout=30, check_timeout=30)
    report = run_conjecture_round(db, run_name="sp", round_index=1, itp="coq", generator=gen,
                                  backend=backend, config=cfg, out_dir=tmp_path / "out")
    g = report.counts["generate"]
    assert g["seed_candidates"] == 3 and g["seeds"] == 3 and g["generated"] == 9
    assert g["parsed"] + sum(g["parse_failures"].values()) == 9
    assert g["parsed"] == g["duplicates"] + g["contaminated"] + g["invalid"] + g["valid"]
    assert g["stored"] == g["valid"] and g["parsed"] >= 1
    rejected = g["rejected_examples"]
    assert len(rejected) == 9 - g["valid"]
    with session_scope(db) as s:
        stored_texts = set(s.scalars(select(Statement.formal_statement)))
        for st, why in rejected:  # ill-formed statements were rejected by Coq, never stored
            if why.startswith("invalid:"):
                assert not backend.check_statement(HEADER, st, timeout=30).proved
                assert st not in stored_texts

        conj = s.scalars(select(Statement).where(Statement.origin == Origin.CONJECTURE)).all()
        links = {c.statement_id: c for c in s.scalars(select(Conjecture)).all()}
        assert len(conj) == g["stored"] == len(links)
        seed_ids = {ids["add_zero"], ids["add_comm2"], ids["mul_le"]}
        for st in conj:  # whatever survived is linked to its seed and was accepted by Coq
            assert st.parent_statement_id in seed_ids and st.round_index == 1
            assert links[st.id].seed_statement_id == st.parent_statement_id
            assert links[st.id].seed_attempt_id is not None
            assert backend.check_statement(st.header, st.formal_statement, timeout=30).proved
        # every stored conjecture was attempted 8 times by the prover, in this run and round
        n_att = s.scalar(select(func.count()).select_from(Attempt)
                         .join(Statement, Statement.id == Attempt.statement_id)
                         .where(Statement.origin == Origin.CONJECTURE, Attempt.round_index == 1))
        assert n_att == 8 * len(conj)
        # scaffolding of the failed attempt at hard_one: sub-goal and negation, linked
        scaf = store.scaffolds_of_round(s, run_id=report.run_id, round_index=1)
        subs = [x for x in scaf if x.origin == Origin.SCAFFOLD_SUBGOAL]
        negs = [x for x in scaf if x.origin == Origin.SCAFFOLD_NEGATION]
        assert len(subs) == 1 and len(negs) == 1
        assert subs[0].formal_statement.endswith(": forall n : nat, 2 * S n <> 1.")
        assert subs[0].parent_statement_id == ids["hard_one"]
        failed_id = s.scalar(select(Attempt.id).where(Attempt.key == "sp/hard/0"))
        assert subs[0].parent_attempt_id == failed_id == negs[0].parent_attempt_id
        assert negs[0].parent_statement_id == subs[0].id
        assert negs[0].formal_statement.endswith(": ~ (forall n : nat, 2 * S n <> 1).")
        rnd = queries.get_or_create_round(s, s.get(queries.Run, report.run_id), 1)
        assert rnd.counts["conjecturer"]["generate"]["generated"] == 9
        assert set(rnd.config["training_sets"]) == {"prover", "conjecturer"}
    # resuming the round generates nothing new
    again = run_conjecture_round(db, run_name="sp", round_index=1, itp="coq", generator=gen,
                                 backend=backend, config=cfg)
    assert again.counts["generate"]["resumed"] is True
    assert again.counts["generate"]["generated"] == 9
    with session_scope(db) as s:  # no second batch of conjectures
        assert s.scalar(select(func.count()).select_from(Conjecture)) == g["stored"]


class ScriptedGenerator:
    """Plays both roles from a script: conjecture prompts get the next scripted conjectures;
    prover prompts get ``correct[k]`` correct proofs then failing ones, by statement text."""

    name = "scripted"
    model = "scripted"

    def __init__(self, conjectures, proofs):
        self.conjectures = list(conjectures)
        self.proofs = proofs  # statement body -> (correct proof, number correct out of n)

    def generate(self, prompts, params, *, progress=None):
        out = []
        for p in prompts:
            if p.startswith("<lemma>"):
                out.append([Completion(self.conjectures.pop(0), 10, 10, "stop")
                            for _ in range(params.n)])
                continue
            proof, k = next((v for body, v in self.proofs.items() if body in p), ("", 0))
            out.append([Completion(proof if i < k else "Proof.\n  intros.\nQed.\n", 10, 10, "stop")
                        for i in range(params.n)])
        return out

    def chat(self, conversations, params, *, progress=None):
        raise NotImplementedError


def test_scripted_conjectures_flow_through_to_selection(db, backend, tiny_model, tmp_path):
    _setup(db, backend)
    conjectures = [
        "Theorem x : forall n : nat, n * 1 = n.\nProof. lia. Qed.",       # barely: 1/8
        "Theorem y : forall a b : nat, a * b = b * a." + HARD_END,          # barely: 2/8
        "Theorem z : forall n : nat, n + = 3." + HARD_END,                  # ill-formed
        "Lemma   w: forall m : nat, m*1 = m .",                              # duplicate of x
        "Theorem q : forall a b : nat, a + b + 0 = b + a.",                  # = test_one (eval)
        "Theorem r : forall k : nat, k + 0 = k.",                            # = add_zero (known)
        "Theorem e : 1 + 1 = 2.",                                            # too easy: 8/8
        "Theorem u : forall n : nat, n <= n * n + 1.",                       # never proved
        "this is not a theorem",                                             # parse failure
    ]
    proofs = {
        "n * 1 = n.": ("Proof.\n  intros; lia.\nQed.\n```", 1),
        "a * b = b * a.": ("Proof.\n  intros a b.\n  apply Nat.mul_comm.\nQed.\n```", 2),
        "1 + 1 = 2.": ("Proof.\n  reflexivity.\nQed.\n```", 8),
    }
    gen = ScriptedGenerator(conjectures, proofs)
    cfg = ConjectureConfig(conjectures_per_seed=3, prove_samples=8, verify_timeout=30,
                           check_timeout=30)
    report = run_conjecture_round(db, run_name="sp", round_index=1, itp="coq", generator=gen,
                                  backend=backend, config=cfg, out_dir=tmp_path / "out",
                                  embedder=hf_embedder(tiny_model))
    g = report.counts["generate"]
    assert (g["generated"], g["parsed"], g["duplicates"], g["contaminated"], g["invalid"],
            g["valid"], g["stored"]) == (9, 8, 2, 1, 1, 4, 4)
    sel = report.counts["select"]
    assert sel["barely_provable"] == 2 and sel["not_barely_provable"] == {"too_easy": 1, "unproved": 1}
    assert sel["targets"] == 1 and sel["selected"] == 2  # hard_one is the one unsolved target
    with session_scope(db) as s:
        chosen = s.execute(
            select(Statement.formal_statement, Conjecture.weight)
            .join(Conjecture, Conjecture.statement_id == Statement.id)
            .where(Conjecture.selected.is_(True)).order_by(Conjecture.id)).all()
        assert [st.split(" : ", 1)[1] for st, _ in chosen] == [
            "forall n : nat, n * 1 = n.", "forall a b : nat, a * b = b * a."]
        assert all(w == 1.0 for _, w in chosen)  # one target, picked by both (top-4)
        # lemmas shown to the conjecturer: "" (placeholder) or a resolved "name : statement"
        for lemma in s.scalars(select(Conjecture.lemma)):
            assert lemma == "" or lemma in (
                "Nat.add_comm : forall n m : nat, n + m = m + n",
                "Nat.mul_le_mono_r : forall n m p : nat, n <= m -> n * p <= m * p")
        # the ill-formed conjecture never reached the database
        assert s.scalar(select(func.count()).select_from(Statement)
                        .where(Statement.formal_statement.like("%n + = 3%"))) == 0
        got = s.execute(text(store.BARELY_PROVABLE_SQL), {"run": "sp", "round": 1}).mappings().all()
        assert [(r["proved"], r["attempts"]) for r in got] == [(1, 8), (2, 8)]
        assert {r["seed"] for r in got} <= {"add_zero", "add_comm2", "mul_le"}
        verdicts = s.scalar(select(func.count()).select_from(Verdict))
        assert verdicts == 7 + 8 * 4  # setup (6 + 1) + 8 per stored conjecture
    from datasets import load_from_disk

    cj = load_from_disk(report.training_sets["conjecturer"]["path"])
    assert len(cj) == 2 and cj[0]["completion"].endswith("\n</hard theorem>")
    assert cj[0]["prompt"].startswith("<lemma>\n") and cj[0]["prompt"].endswith("<hard theorem>\n")
    pv = load_from_disk(report.training_sets["prover"]["path"])
    # correct proofs of statements with pass rate <= 0.5: x (1 unique), y (1 unique)
    assert len(pv) == 2 and all(0 < w <= 1 for w in pv["weight"])
