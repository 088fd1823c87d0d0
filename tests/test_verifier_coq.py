"""The Coq backend: real miniF2F-rocq statements, an adversarial corpus, sandbox and limits."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

import verifier
from verifier import ProofTask, Sandbox, SandboxUnavailable, Status
from verifier.coq import CoqBackend
from verifier.pool import _children_map
from verifier.sandbox import Limits

pytestmark = pytest.mark.timeout(600)

NAT_H = "Require Import Arith.\n\n"
FALSE_S = "Theorem nt : 2 + 3 = 6."  # false: nothing may prove it
TRUE_S = "Theorem tt5 : 2 + 3 = 5."
REALS_H = "Require Import Reals.\nOpen Scope R_scope.\n\n"


@pytest.fixture(scope="module")
def rows(shared_data):
    path = shared_data / "minif2f" / "minif2f_rocq.jsonl"
    return {r["name"]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def coq():
    b = CoqBackend(pool_size=2, sandbox=Sandbox(limits=Limits(address_space_bytes=2 << 30)))
    yield b
    b.close()


@pytest.fixture(scope="module")
def raw():
    """Prefilter disabled: only the sandbox and the trusted recheck stand in the way."""
    b = CoqBackend(pool_size=1, prefilter=False)
    yield b
    b.close()


def task(rows, name, proof):
    r = rows[name]
    return ProofTask(r["header"], r["formal_statement"], proof, id=name)


GOOD = [
    ("mathd_algebra_109", "Require Import Lra.\nProof. intros; lra. Qed."),  # Reals + proof Require
    ("mathd_algebra_109", "Require Import Lra.\nProof.\n  intros.\n  lra.\nDefined."),  # Defined
    ("mathd_algebra_123", "From Stdlib Require Import Lia.\nProof. intros; lia. Qed."),  # Rocq 9
    ("amc12b_2020_p5", "Require Import Lia.\nProof. intros; nia. Qed."),
    ("mathd_algebra_182", "Proof. intros. apply injective_projections; simpl; ring. Qed."),  # Coquelicot
    # the proof's libraries go before the header, so `condition` keeps the header's meaning
    ("amc12a_2020_p4", "Require Import Lia Lra Psatz Reals ZArith.\nProof. vm_compute. reflexivity. Qed."),
]


def test_known_good_proofs(coq, rows):
    tasks = [task(rows, n, p) for n, p in GOOD]
    vs = coq.verify_batch(tasks, timeout=60)
    for t, v in zip(tasks, vs):
        assert v.status is Status.PROVED, (t.id, t.proof, v)
        assert v.sandboxed and v.backend == "coq" and v.backend_version.startswith("8.")
        assert v.reason is None
    reals = vs[0]
    assert "Coq.Reals.ClassicalDedekindReals.sig_forall_dec" in reals.axioms
    assert all(a in coq.allowed_axioms for v in vs for a in v.axioms)


def test_error_messages_are_relative_to_the_proof(coq, rows):
    proof = "Require Import Lra.\nProof.\n  intros h0 h1.\n  rewrite no_such_lemma.\nQed."
    v = coq.verify(task(rows, "mathd_algebra_109", proof), timeout=60)
    assert v.status is Status.FAILED and v.reason == "error"
    m = v.messages[0]
    assert "no_such_lemma" in m.text and m.in_proof and m.line == 4 and m.column == 10
    # naive mode (coqc) reports the same position
    with CoqBackend(mode="coqc") as naive:
        w = naive.verify(task(rows, "mathd_algebra_109", proof), timeout=60)
    assert w.status is Status.FAILED and (w.messages[0].line, w.messages[0].column) == (4, 10)




def adversarial(rows):
    amc = rows["amc12a_2020_p4"]
    amc_stmt_false = amc["formal_statement"].replace("= 100.", "= 101.")
    shadow = (
        "Proof. Abort.\nModule Shadow.\n"
        "Definition condition (x : nat * nat * nat * nat) : bool :=\n"
        "  let '(a, b, c, d) := x in\n"
        "  (Nat.eqb a 1 && Nat.eqb b 0) || (Nat.eqb a 2 && Nat.eqb b 0 && Nat.eqb c 0 && Nat.eqb d 0).\n"
        "End Shadow.\nImport Shadow.\n"
        + amc_stmt_false + "\nProof. vm_compute. reflexivity. Qed."
    )
    pos = (
        "Inductive Bad := mk : (Bad -> False) -> Bad.\n"
        "Definition app (b : Bad) : Bad -> False := match b with mk f => f end.\n"
        "Definition b0 : Bad := mk (fun b => app b b).\n"
        f"{FALSE_S}\nProof. destruct (app b0 b0). Qed."
    )
    cases = {
        "admitted": (NAT_H, FALSE_S, "Proof. Admitted."),
        "admit": (NAT_H, FALSE_S, "Proof. admit. Qed."),
        "give_up": (NAT_H, FALSE_S, "Proof. give_up. Qed."),
        "abort_redeclare": (NAT_H, FALSE_S, "Proof. Abort.\nTheorem nt : True.\nProof. exact I. Qed."),
        "left_open": (NAT_H, FALSE_S, "Proof. simpl."),
        "module_redeclare": (NAT_H, FALSE_S,
                             "Proof. Abort.\nModule M.\nTheorem nt : True. exact I. Qed.\nEnd M.\nDefinition nt := M.nt."),
        "shadow_definition": (amc["header"], amc_stmt_false, shadow),
        "notation_shadow": (NAT_H, FALSE_S,
                            "Proof. Abort.\nLocal Notation \"x + y\" := (Nat.mul x y) : nat_scope.\n"
                            "Theorem nt : 2 + 3 = 6.\nProof. reflexivity. Qed."),
        "own_axiom": (NAT_H, FALSE_S, "Proof. Abort.\nAxiom cheat : 2 + 3 = 6.\nTheorem nt : 2 + 3 = 6.\nProof. exact cheat. Qed."),
        "fake_library_axiom": (NAT_H, FALSE_S,
                               "Proof. Abort.\nModule Coq. Module Reals. Module Raxioms.\n"
                               "Axiom completeness : 2 + 3 = 6.\nEnd Raxioms. End Reals. End Coq.\n"
                               "Theorem nt : 2 + 3 = 6.\nProof. exact Coq.Reals.Raxioms.completeness. Qed."),
        "unset_guard": (NAT_H, FALSE_S,
                        "Proof. Abort.\nUnset Guard Checking.\nFixpoint bad (n : nat) : False := bad n.\n"
                        "Set Guard Checking.\nTheorem nt : 2 + 3 = 6.\nProof. destruct (bad 0). Qed."),
        "local_unset_guard": (NAT_H, FALSE_S,
                              "Proof. Abort.\nLocal Unset Guard Checking.\nFixpoint bad (n : nat) : False := bad n.\n"
                              "Theorem nt : 2 + 3 = 6.\nProof. destruct (bad 0). Qed."),
        "bypass_attribute": (NAT_H, FALSE_S,
                             "Proof. Abort.\n#[bypass_check(guard)] Fixpoint bad (n : nat) : False := bad n.\n"
                             "Theorem nt : 2 + 3 = 6.\nProof. destruct (bad 0). Qed."),
        "unset_positivity": (NAT_H, FALSE_S, "Proof. Abort.\nUnset Positivity Checking.\n" + pos),
        "unset_universe": (NAT_H, TRUE_S, "Proof. Unset Universe Checking. reflexivity. Qed."),
        "fake_output": (NAT_H, FALSE_S,
                        "Proof. idtac \"No more goals.\". idtac \"Closed under the global context\". Admitted."),
        "redirect": (NAT_H, TRUE_S, "Proof. Redirect \"/tmp/vrf_pwned\" Print nat. reflexivity. Qed."),
        "load": (NAT_H, TRUE_S, "Proof. Load \"/etc/passwd\". reflexivity. Qed."),
        "cd": (NAT_H, TRUE_S, "Proof. Cd \"/\". reflexivity. Qed."),
        "declare_ml": (NAT_H, FALSE_S, "Declare ML Module \"coq-core.plugins.ltac\".\nProof. Admitted."),
        "qed_then_garbage": (NAT_H, TRUE_S, "Proof. reflexivity. Qed. this is not coq ."),
        "unclosed_comment": (NAT_H, TRUE_S, "Proof. reflexivity. (* Qed."),
        "reset": (NAT_H, FALSE_S, "Proof. Abort.\nReset nt.\nTheorem nt : True.\nProof. exact I. Qed."),
        "back": (NAT_H, FALSE_S, "Proof.\nBack 1.\nTheorem nt : True.\nProof. exact I. Qed."),
        "flood": (NAT_H, TRUE_S,
                  "Proof. do 100000 idtac \"" + "x" * 80 + "\". reflexivity. Qed."),
    }
    return cases


ADV_NAMES = [
    "admitted", "admit", "give_up", "abort_redeclare", "left_open", "module_redeclare",
    "shadow_definition", "notation_shadow", "own_axiom", "fake_library_axiom", "unset_guard",
    "local_unset_guard", "bypass_attribute", "unset_positivity", "unset_universe", "fake_output",
    "redirect", "load", "cd", "declare_ml", "qed_then_garbage", "unclosed_comment", "reset",
    "back", "flood",
]
NOT_PROVED = {Status.FAILED, Status.REJECTED_UNSOUND}


@pytest.fixture(scope="module")
def adv_verdicts(coq, raw, rows):
    cases = adversarial(rows)
    assert sorted(cases) == sorted(ADV_NAMES)
    tasks = [ProofTask(h, s, p, id=k) for k, (h, s, p) in cases.items()]
    return (
        dict(zip(cases, coq.verify_batch(tasks, timeout=30))),
        dict(zip(cases, raw.verify_batch(tasks, timeout=30))),
    )


# proofs of a TRUE statement whose only sin is a sandboxed side effect: with the prefilter off
# they may be proved, but the side effect must stay inside the sandbox
CONTAINED = {"redirect", "cd"}


@pytest.mark.parametrize("case", ADV_NAMES)
def test_adversarial_not_proved(adv_verdicts, case):
    filtered, unfiltered = adv_verdicts
    for v in (filtered[case], unfiltered[case]):
        if v is unfiltered[case] and case in CONTAINED:
            continue
        assert v.status in NOT_PROVED, (case, v)
        assert v.reason
    if case == "redirect":
        assert not Path("/tmp/vrf_pwned.out").exists() and not Path("/tmp/vrf_pwned").exists()


def test_adversarial_reasons(adv_verdicts):
    filtered, unfiltered = adv_verdicts
    # the fast prefilter
    assert filtered["unset_guard"].status is Status.REJECTED_UNSOUND
    assert filtered["unset_guard"].reason == "kernel_bypass"
    assert filtered["bypass_attribute"].reason == "kernel_bypass"
    for k in ("redirect", "load", "cd", "declare_ml"):
        assert filtered[k].status is Status.REJECTED_UNSOUND and filtered[k].reason == "forbidden_command"
    assert filtered["admitted"].reason == "sorry"
    assert filtered["flood"].reason == "output_limit"
    assert filtered["left_open"].reason == "incomplete_proof"
    # the real guard: the trusted recheck of the compiled result, with the prefilter off
    assert unfiltered["unset_guard"].reason == "kernel_bypass"
    assert unfiltered["local_unset_guard"].reason == "kernel_bypass"
    assert unfiltered["bypass_attribute"].reason == "kernel_bypass"
    assert unfiltered["unset_positivity"].reason == "kernel_bypass"
    for k in ("abort_redeclare", "module_redeclare", "shadow_definition", "notation_shadow", "reset"):
        assert unfiltered[k].reason == "statement_mismatch", (k, unfiltered[k])
    for k in ("own_axiom", "fake_library_axiom", "admitted", "fake_output"):
        assert unfiltered[k].status is Status.REJECTED_UNSOUND, (k, unfiltered[k])
        assert unfiltered[k].reason == "axiom_not_allowed", (k, unfiltered[k])
    assert any("Raxioms.completeness" in m.text for m in unfiltered["fake_library_axiom"].messages)


def test_same_pools_still_prove_after_adversaries(adv_verdicts, coq, raw, rows):
    t = task(rows, "mathd_algebra_109", "Require Import Lra.\nProof. intros; lra. Qed.")
    assert coq.verify(t, timeout=60).status is Status.PROVED
    assert raw.verify(t, timeout=60).status is Status.PROVED
    assert raw.verify(ProofTask(NAT_H, TRUE_S, "Proof. reflexivity. Qed."), timeout=60).proved


def test_sandbox_blocks_coq_without_prefilter(raw):
    """With the prefilter off, Redirect/Load run for real; the sandbox must stop them."""
    outside = Path(tempfile.mkdtemp(prefix="vrf-outside-"))
    os.chmod(outside, 0o777)
    home = Path(os.path.expanduser("~"))
    secret = home / f".vrf_secret_{uuid.uuid4().hex}.v"
    secret.write_text("Definition leaked_secret := 42.\n")
    try:
        w = raw.verify(
            ProofTask(NAT_H, TRUE_S, f'Proof. Redirect "{outside}/leak" Print nat. reflexivity. Qed.'),
            timeout=60,
        )
        assert not list(outside.iterdir())
        assert w.status is Status.FAILED
        r = raw.verify(
            ProofTask(NAT_H, TRUE_S, f'Proof. Load "{secret}". Check leaked_secret. reflexivity. Qed.'),
            timeout=60,
        )
        assert r.status is Status.FAILED
        assert any("leaked_secret" not in m.text or "not found" in m.text for m in r.messages)
    finally:
        secret.unlink(missing_ok=True)
        for f in outside.iterdir():
            f.unlink()
        outside.rmdir()


def test_infinite_loop_times_out_and_pool_restarts(coq):
    t0 = time.monotonic()
    v = coq.verify(
        ProofTask(NAT_H, TRUE_S, "Require Import PArith.\nProof. Eval vm_compute in "
                  "(Pos.iter negb true 100000000000000). reflexivity. Qed."),
        timeout=3,
    )
    assert v.status is Status.TIMEOUT
    assert time.monotonic() - t0 < 3 + 2
    assert coq.verify(ProofTask(NAT_H, TRUE_S, "Require Import PArith.\nProof. reflexivity. Qed."),
                      timeout=60).proved


def test_memory_bomb_is_resource_limit(coq):
    v = coq.verify(
        ProofTask(NAT_H, TRUE_S, "Require Import List.\nProof. Eval vm_compute in "
                  "(List.length (List.repeat true 300000000)). reflexivity. Qed."),
        timeout=60,
    )
    assert v.status is Status.RESOURCE_LIMIT, v
    assert coq.verify(ProofTask(NAT_H, TRUE_S, "Require Import List.\nProof. reflexivity. Qed."),
                      timeout=60).proved


def _coqtop_pids() -> set[int]:
    pids = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if cmd.endswith(b"coqtop") or cmd.endswith(b"coqtop.opt"):
                pids.add(int(pid))
    return pids


def test_prover_crash_is_not_proved_and_pool_recovers(coq):
    header = "Require Import PArith.\n(* crash test *)\n"
    key = coq.prepare(ProofTask(header, TRUE_S, "Proof. reflexivity. Qed.")).key
    with coq.session(key) as (s, _):  # warm the session the next attempt will use
        pass
    # descendants of this session's sandbox
    kids, stack = set(), [s.proc.proc.pid]
    cmap = _children_map()
    while stack:
        p = stack.pop()
        kids.add(p)
        stack.extend(cmap.get(p, ()))
    targets = kids & _coqtop_pids()
    assert targets
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("v", coq.verify(
        ProofTask(header, TRUE_S, "Proof. Eval vm_compute in (Pos.iter negb true 100000000000000). "
                  "reflexivity. Qed."), timeout=60)))
    th.start()
    time.sleep(1.5)
    for p in targets:
        os.kill(p, 9)
    th.join(60)
    assert out["v"].status is not Status.PROVED
    assert out["v"].status is Status.FAILED and out["v"].reason == "crash"
    assert coq.verify(ProofTask(header, TRUE_S, "Proof. reflexivity. Qed."), timeout=60).proved


def test_batch_order_and_dedup(coq):
    good = ProofTask(NAT_H, TRUE_S, "Proof. reflexivity. Qed.")
    bad = ProofTask(NAT_H, TRUE_S, "Proof. exact I. Qed.")
    vs = coq.verify_batch([good, bad, good, bad, good], timeout=60)
    assert [v.status for v in vs] == [Status.PROVED, Status.FAILED] * 2 + [Status.PROVED]
    vs[0].messages.append("mutated")  # verdicts are independent copies
    assert vs[2].messages == []


def test_check_statement(coq, rows):
    r = rows["mathd_algebra_109"]
    assert coq.check_statement(r["header"], r["formal_statement"], timeout=60).status is Status.PROVED
    bad = coq.check_statement(REALS_H, "Theorem t : forall x : R, x + true = x.", timeout=60)
    assert bad.status is Status.FAILED and "bool" in bad.messages[0].text
    assert bad.messages[0].in_proof is False and bad.messages[0].line == 1
    # Rocq 9 spelling in the header
    st = coq.check_statement("From Stdlib Require Import Reals.\nOpen Scope R_scope.\n",
                             "Theorem t : forall x : R, x + 0 = x.", timeout=60)
    assert st.status is Status.PROVED


def test_open_goals(coq, rows):
    r = rows["mathd_algebra_109"]
    goals = coq.open_goals(r["header"], r["formal_statement"], "Proof. intros h0 h1. subst a.", timeout=60)
    assert goals == ["forall b : R, 3 * 4 + 2 * b = 12 -> b = 0"]
    # the printed goal is itself a statement that typechecks under the same header
    v = coq.check_statement(r["header"], f"Theorem g : {goals[0]}.", timeout=60)
    assert v.status is Status.PROVED


def test_public_api_and_unsafe_mode(rows):
    bogus = Sandbox(bwrap="/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable):
        CoqBackend(sandbox=bogus)
    with pytest.raises(SandboxUnavailable):
        verifier.get_backend("coq", sandbox=bogus)
    with verifier.get_backend("coq", sandbox=Sandbox(enabled=False, bwrap="/nonexistent/bwrap")) as b:
        v = verifier.verify(NAT_H, TRUE_S, "Proof. reflexivity. Qed.", backend=b, timeout=60)
        assert v.status is Status.PROVED and v.sandboxed is False
        vs = verifier.verify_batch([ProofTask(NAT_H, TRUE_S, "Proof. exact I. Qed.")], backend=b, timeout=60)
        assert vs[0].status is Status.FAILED and vs[0].sandboxed is False
    with pytest.raises(ValueError):
        verifier.get_backend("isabelle")


def test_session_moves_between_keys_without_leaking_libraries():
    """One warm session serves proofs with different Require lines: it keeps the loaded
    sentences as a stack and goes back to the common prefix, so a library loaded for one proof
    is gone for the next (the same verdicts as one fresh coqc each)."""
    header = "Require Import PeanoNat.\n"
    stmt = "Theorem lk : forall n : nat, n + 0 = n."
    with_lia = ProofTask(header, stmt, "Require Import Lia.\nProof. intros; lia. Qed.")
    without = ProofTask(header, stmt, "Proof. intros; lia. Qed.")
    with CoqBackend(pool_size=1) as b:
        # sorted by Require sentences, the Lia key runs first, then the session goes back
        vs = b.verify_batch([without, with_lia, without], timeout=60)
        assert [v.status for v in vs] == [Status.FAILED, Status.PROVED, Status.FAILED], vs
        assert b.pool.stats()["created"] == 1
        with b.session(b.prepare(with_lia).key) as (s, errs):
            assert not errs and s.loaded() == ["Require Import Lia.", "Require Import PeanoNat."]
        with b.session(b.prepare(without).key) as (s, errs):
            assert not errs and s.loaded() == ["Require Import PeanoNat."]
        assert b.verify(without, timeout=60).status is Status.FAILED
        with CoqBackend(mode="coqc") as naive:
            assert [v.status for v in naive.verify_batch([without, with_lia], timeout=60)] == [
                Status.FAILED, Status.PROVED]


def test_assumptions_of_one_statement_checked_together_then_split(raw):
    """The proofs of one statement share one Print Assumptions; a foreign axiom in the union
    splits the group, so the clean proof is still proved and the cheat is still rejected."""
    clean = ProofTask(NAT_H, TRUE_S, "Proof. reflexivity. Qed.")
    classic = ProofTask(NAT_H, TRUE_S, "Require Import Classical.\nProof. "
                        "destruct (classic True); reflexivity. Qed.")
    cheat = ProofTask(NAT_H, TRUE_S, "Proof. Abort.\nAxiom cheat5 : 2 + 3 = 5.\n"
                      "Theorem tt5 : 2 + 3 = 5.\nProof. exact cheat5. Qed.")
    vs = raw.verify_batch([clean, cheat, classic], timeout=60)
    assert vs[0].status is Status.PROVED and vs[0].axioms == []
    assert vs[1].status is Status.REJECTED_UNSOUND and vs[1].reason == "axiom_not_allowed"
    assert vs[2].status is Status.PROVED and "Coq.Logic.Classical_Prop.classic" in vs[2].axioms
