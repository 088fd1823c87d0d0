"""Celery orchestration on real services (Redis, PostgreSQL) and the self-play driver.

Workers and clients run as separate processes, as they do in production: the test starts
`prover worker` processes, submits work from a client process, kills things, and reads the
outcome from the database.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from db import queries
from db.models import Attempt, Verdict
from db.session import session_scope

ROOT = Path(__file__).resolve().parents[1]
PROVER = str(Path(sys.executable).with_name("prover"))
REDIS = os.environ.get("PROVER_TEST_REDIS", "redis://127.0.0.1:6379")


@pytest.fixture()
def redis_env(tmp_path):
    """Broker and result backend on two scratch Redis databases, flushed before use."""
    host, port = REDIS.split("//")[1].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as exc:
        msg = f"Redis not reachable at {REDIS}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    import redis

    base = 8 + (os.getpid() % 4) * 2
    for n in (base, base + 1):
        redis.Redis.from_url(f"{REDIS}/{n}").flushdb()
    env = dict(os.environ)
    env.update(
        PROVER_BROKER_URL=f"{REDIS}/{base}",
        PROVER_RESULT_BACKEND=f"{REDIS}/{base + 1}",
        PROVER_HOME=str(tmp_path / "home"),
        PROVER_VISIBILITY_TIMEOUT="6",
    )
    return env


class Worker:
    def __init__(self, name: str, env: dict, log: Path, concurrency: int = 1):
        self.name, self.log = name, log
        self.proc = subprocess.Popen(
            [PROVER, "worker", "--queues", "verify", "--concurrency", str(concurrency),
             "--hostname", f"{name}@%h", "--loglevel", "info"],
            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "ready." in self.text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited:\n{self.text()}")
            time.sleep(0.3)
        raise AssertionError(f"worker {self.name} not ready:\n{self.text()}")

    def kill(self) -> None:
        """SIGKILL the worker and all its pool processes at once: nothing can ack."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()


def _seed_attempts(db_url: str, shared_data: Path, proofs: list[tuple[str, str]]) -> list[int]:
    """Import miniF2F-rocq and store one unverified attempt per (statement name, proof)."""
    from db.importer import import_benchmark

    with session_scope(db_url) as s:
        import_benchmark(s, "minif2f", itp="coq")
        by_name = {r.name: r for r in queries.dataset_statements(s, "minif2f-rocq")}
        run = queries.get_or_create_run(s, "celery-test", kind="eval")
        recs = [queries.AttemptRecord(key=f"celery-test/{i}", statement_id=by_name[name].id,
                                      proof=proof, run_id=run.id, sample_index=i)
                for i, (name, proof) in enumerate(proofs)]
        ids = queries.record_attempts(s, recs)
    return [ids[r.key] for r in recs]


GOOD = "Proof.\n  intros; lia.\nQed."
# mathd_algebra_109 over R needs lra; lia fails quickly; an infinite loop times out.
LOOP = "Proof.\n  intros. repeat (assert True by exact I).\nQed."
CASES = [
    ("mathd_algebra_109", "Require Import Lra.\nProof.\n  intros; lra.\nQed."),
    ("mathd_algebra_109", "Proof.\n  intros; lia.\nQed."),
    ("mathd_algebra_109", "Proof.\n  admit.\nAdmitted."),
    ("amc12b_2020_p5", "Require Import Lia.\nProof.\n  intros; lia.\nQed."),
    ("amc12b_2020_p5", "Proof.\n  reflexivity.\nQed."),
    ("mathd_algebra_109", "Require Import Lra.\nProof.\n  intros; lra.\nQed."),  # duplicate
]


def _client(env: dict, code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _verdicts(db_url: str, ids: list[int]) -> dict[int, str]:
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        rows = conn.execute(select(Verdict.attempt_id, Verdict.status)
                            .where(Verdict.attempt_id.in_(ids))).all()
    engine.dispose()
    return {a: s.value if hasattr(s, "value") else s for a, s in rows}


@pytest.mark.postgres
@pytest.mark.redis
def test_verify_batch_through_celery_matches_in_process(redis_env, pg_url, shared_data,
                                                        tmp_path):
    pg_database_url = pg_url
    ids = _seed_attempts(pg_database_url, shared_data, CASES)
    worker = Worker("w1", redis_env, tmp_path / "w1.log", concurrency=2)
    try:
        worker.wait_ready()
        out = _client(redis_env, f"""
            from db.session import get_engine
            from workers.dispatch import verify_pending_via_celery
            n = verify_pending_via_celery(get_engine({pg_database_url!r}), "coq",
                                          attempt_ids={ids!r}, timeout=30, chunk=2)
            print("dispatched", n)
        """)
        assert out.returncode == 0, out.stderr + worker.text()
    finally:
        worker.stop()
    through_celery = _verdicts(pg_database_url, ids)

    # the same proofs, in process, on a second database
    local_db = f"sqlite:///{tmp_path}/local.db"
    local_ids = _seed_attempts(local_db, shared_data, CASES)
    from prover.checking import verify_pending
    from verifier import backend_from_options

    from db.session import get_engine

    backend = backend_from_options("coq", workers=2)
    try:
        verify_pending(get_engine(local_db), backend, timeout=30, attempt_ids=local_ids)
    finally:
        backend.close()
    in_process = _verdicts_sqlite(local_db, local_ids)
    assert [through_celery[i] for i in ids] == [in_process[i] for i in local_ids]
    assert [through_celery[i] for i in ids] == [
        "proved", "failed", "failed", "proved", "failed", "proved"]


def _verdicts_sqlite(url: str, ids: list[int]) -> dict[int, str]:
    with session_scope(url) as s:
        rows = s.execute(select(Verdict.attempt_id, Verdict.status)
                         .where(Verdict.attempt_id.in_(ids))).all()
    return {a: st.value for a, st in rows}


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_sigkilled_worker_task_is_redelivered_and_recorded_once(redis_env, pg_url,
                                                                 shared_data, tmp_path):
    pg_database_url = pg_url
    # one task of 4 proofs that each run into the 3 s timeout: about 12 s of work
    ids = _seed_attempts(pg_database_url, shared_data,
                         [("mathd_algebra_109", LOOP.replace("I)", f"I); idtac {i}"))
                          for i in range(4)])
    a = Worker("a", redis_env, tmp_path / "a.log")
    b = Worker("b", redis_env, tmp_path / "b.log")
    client = None
    try:
        a.wait_ready()
        b.wait_ready()
        client = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""
                from db.session import get_engine
                from workers.dispatch import verify_pending_via_celery
                verify_pending_via_celery(get_engine({pg_database_url!r}), "coq",
                                          attempt_ids={ids!r}, timeout=3, chunk=8)
                print("done")
            """)],
            env=redis_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        victim = survivor = None
        while time.time() < deadline and victim is None:
            for w, other in ((a, b), (b, a)):
                if "verify_attempts" in w.text() and "received" in w.text():
                    victim, survivor = w, other
            time.sleep(0.2)
        assert victim is not None, a.text() + b.text()
        time.sleep(2)  # mid-task: the first proof is still running into its timeout
        assert _verdicts(pg_database_url, ids) == {}
        victim.kill()
        out, err = client.communicate(timeout=180)
        assert client.returncode == 0, err + survivor.text()
        assert "succeeded" in survivor.text()
    finally:
        for w in (a, b):
            w.stop()
        if client and client.poll() is None:
            client.kill()
    verdicts = _verdicts(pg_database_url, ids)
    assert sorted(verdicts) == sorted(ids)
    assert set(verdicts.values()) == {"timeout"}
    engine = create_engine(pg_database_url)
    with engine.connect() as conn:
        n_attempts = conn.execute(select(func.count()).select_from(Attempt)).scalar()
        n_verdicts = conn.execute(select(func.count()).select_from(Verdict)).scalar()
    engine.dispose()
    assert n_attempts == n_verdicts == len(ids)


# --------------------------------------------------------------------------- self-play


def _tiny_recipe(tmp_path: Path, **over) -> Path:
    recipe = {
        "name": "tiny-test", "itp": "coq", "benchmark": "minif2f", "train_split": "valid",
        "eval_split": "test", "limit": 6, "eval_limit": 3, "rounds": 1,
        "out_dir": str(tmp_path / "runs"), "model": "tiny", "backend": "hf",
        "bootstrap": False, "samples": 2, "max_tokens": 24, "verify_timeout": 10,
        "verify_workers": 1, "eval_n": 1, "eval_ks": [1],
        "conjecture": {"prove_samples": 2, "min_attempts": 2, "max_tokens": 24,
                       "prove_max_tokens": 24, "scaffold_max_attempts": 2},
        "train": {"num_train_epochs": 1, "max_length": 256},
    } | over
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def test_embedded_selfplay_round_runs_and_resumes_after_a_kill(tmp_path, shared_data):
    """No services: SQLite and the in-process verifier. The driver is SIGKILLed while a round
    is in progress; the restarted driver completes it with no duplicated attempts."""
    recipe = _tiny_recipe(tmp_path)
    db = f"sqlite:///{tmp_path}/sp.db"
    env = dict(os.environ, PROVER_HOME=str(tmp_path / "home"), PROVER_DB_URL=db)
    cmd = [PROVER, "selfplay", "--config", str(recipe)]
    # killed after the verify step did its work, before the step was recorded as done
    first = subprocess.run(cmd, env=env | {"PROVER_FAULT_INJECT": "kill-after:verify"},
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    engine = create_engine(db)
    with engine.connect() as conn:
        step = conn.execute(text("SELECT step FROM rounds WHERE \"index\" = 0")).scalar()
        stored = conn.execute(text("SELECT COUNT(*) FROM attempts WHERE round_index = 0")).scalar()
    assert step == "verify" and stored == 6 * 2
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    with engine.connect() as conn:
        step = conn.execute(text("SELECT step FROM rounds WHERE \"index\" = 0")).scalar()
        keys = conn.execute(text("SELECT key FROM attempts WHERE round_index = 0 "
                                 "AND key LIKE 'tiny-test/r0/%'")).scalars().all()
        unverified = conn.execute(text(
            "SELECT COUNT(*) FROM attempts a LEFT JOIN verdicts v ON v.attempt_id = a.id "
            "WHERE v.id IS NULL")).scalar()
        counts = json.loads(conn.execute(text(
            "SELECT counts FROM rounds WHERE \"index\" = 0")).scalar())
    engine.dispose()
    assert step == "done"
    assert len(keys) == len(set(keys)) == 6 * 2  # every target x samples, once
    assert unverified == 0
    assert {"attempt", "verify", "conjecture", "select", "assemble", "train",
            "evaluate"} <= set(counts)
    assert "pass@1" in counts["evaluate"]


def test_embedded_broker_needs_no_server(tmp_path):
    """The default broker and result backend are SQLite files: `prover worker` and
    `prover verify --via-celery` work with no service running."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PROVER_BROKER_URL", "PROVER_RESULT_BACKEND")}
    env["PROVER_HOME"] = str(tmp_path / "home")
    worker = Worker("embedded", env, tmp_path / "w.log")
    rows = [{"id": 1, "header": "", "statement": "Theorem t : 1 + 1 = 2.",
             "proof": "Proof. reflexivity. Qed."},
            {"id": 2, "header": "", "statement": "Theorem u : 1 + 1 = 3.",
             "proof": "Proof. reflexivity. Qed."}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        worker.wait_ready()
        out = subprocess.run([PROVER, "verify", "--itp", "coq", "--input",
                              str(tmp_path / "in.jsonl"), "--via-celery"],
                             env=env, capture_output=True, text=True, timeout=300)
    finally:
        worker.stop()
    assert out.returncode == 0, out.stderr + worker.text()
    verdicts = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert [(v["id"], v["status"]) for v in verdicts] == [(1, "proved"), (2, "failed")]
    assert "succeeded" in worker.text()
