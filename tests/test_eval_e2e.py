"""End to end: `prover eval` with real generators (tiny hf model, an OpenAI-compatible server on
127.0.0.1, the portfolio, scripted generators), the real Coq verifier and real databases."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from db.importer import import_jsonl
from db.session import get_engine, session_scope
from prover.eval import EvalSpec, in_process_checker, run_eval
from prover.generation.base import Completion, SamplingParams, make_generator
from prover.report import as_dict, write_report
from workers.cli import app

ROOT = Path(__file__).resolve().parents[1]
PROVER = Path(sys.executable).with_name("prover")
RUNNER = CliRunner()

# Test statements with known proofs (checked by the real verifier in these tests). NAT and
# NAT2 share the header `Require Import Arith.`, so they share warm verifier sessions.
REAL = "mathd_algebra_412"  # x + y = 25 -> x - y = 11 -> x = 18 over R
NAT = "mathd_numbertheory_66"  # 194 mod 11 = 7
NAT2 = "mathd_numbertheory_342"  # 54 mod 6 = 0
OTHER = "mathd_algebra_24"  # only ever answered with garbage here
FAILS_FAST = "aime_1983_p3"  # every portfolio variant fails within a second or two
GOOD = {REAL: "Require Import Lra.\nProof.\n  intros; lra.\nQed.",
        NAT: "Proof.\n  reflexivity.\nQed."}
WRONG = {REAL: "Proof.\n  intros.\n  reflexivity.\nQed.",
         NAT: "Proof.\n  discriminate.\nQed.",
         NAT2: "Proof.\n  discriminate.\nQed."}
# No proof in it for either format: a completion that closes the fence at once, no coq block.
GARBAGE = "```\nI am not sure how to prove this one."


# --------------------------------------------------------------------------- helpers


def rocq_rows(shared_data: Path) -> dict[str, dict]:
    rows = {}
    with open(shared_data / "minif2f" / "minif2f_rocq.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["split"] == "test":
                rows[row["name"]] = row
    return rows


def import_subset(db: str, rows: dict[str, dict], names: Sequence[str], path: Path) -> str:
    """A small dataset made of some miniF2F-rocq test rows (an "imported dataset")."""
    path.write_text("".join(json.dumps(rows[n]) + "\n" for n in names))
    with session_scope(db) as s:
        import_jsonl(s, path, itp="coq", dataset_name=path.stem)
    return path.stem


def theorem_name(text: str) -> str | None:
    found = re.findall(r"Theorem\s+([A-Za-z0-9_']+)", text)
    return found[-1] if found else None


def chat_answer(row: dict, proof: str) -> str:
    """A chat answer: a plan, then one ```coq block with the theorem and its proof."""
    require, proof_part = "", proof
    if proof.startswith("Require"):
        require, _, proof_part = proof.partition("\n")
        require += "\n\n"
    return (f"Plan: use the hypotheses.\n\n```coq\n{require}{row['formal_statement']}\n"
            f"{proof_part}\n```\n")


def continuation(proof: str) -> str:
    """A completion-format answer: continues the open fence after the statement."""
    return f"\n{proof}\n```\nDone."


class CountingBackend:
    """Delegates to the real verifier and records every task it is asked to check."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.tasks: list = []

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def version(self) -> str:
        return self.inner.version()

    def verify_batch(self, tasks, *, timeout):
        self.tasks += list(tasks)
        return self.inner.verify_batch(tasks, timeout=timeout)

    def close(self) -> None:  # the shared backend is closed by its fixture
        pass


class Scripted:
    """A Generator whose answers are scripted per theorem name.

    ``first[name]``: completion texts of round 0, sample j gets ``first[name][j % len]``;
    ``fix[name]``: the answer to a correction turn. Records every prompt and conversation."""

    name = "scripted"

    def __init__(self, first: dict[str, list[str]], fix: dict[str, str] | None = None,
                 model: str = "scripted-model"):
        self.first, self.fix, self.model = first, fix or {}, model
        self.prompts: list = []
        self.conversations: list = []

    def generate(self, prompts, params: SamplingParams, *, progress=None):
        out = []
        for p in prompts:
            self.prompts.append(p)
            texts = self.first.get(theorem_name(p), [GARBAGE])
            out.append([Completion(texts[j % len(texts)], 10, 5, "stop") for j in range(params.n)])
        return out

    def chat(self, conversations, params: SamplingParams, *, progress=None):
        out = []
        for conv in conversations:
            self.conversations.append(conv)
            if len(conv) == 1:  # a first-round chat prompt
                texts = self.first.get(theorem_name(conv[0]["content"]), [GARBAGE])
                out.append([Completion(texts[j % len(texts)], 10, 5, "stop")
                            for j in range(params.n)])
            else:  # a correction turn
                answer = self.fix.get(theorem_name(conv[0]["content"]), GARBAGE)
                out.append([Completion(answer, 10, 5, "stop")] * params.n)
        return out


class CountingGenerator:
    def __init__(self, inner):
        self.inner, self.name, self.model = inner, inner.name, inner.model
        self.calls = 0

    def generate(self, prompts, params, *, progress=None):
        self.calls += len(prompts)
        return self.inner.generate(prompts, params)

    def chat(self, conversations, params, *, progress=None):
        self.calls += len(conversations)
        return self.inner.chat(conversations, params)


def db_rows(db: str, sql: str, **params) -> list[tuple]:
    with get_engine(db).connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), params)]


def attempt_verdicts(db: str) -> list[tuple]:
    """(key, correction_round, proof, status, reason, seconds, backend) per attempt, by key."""
    return db_rows(db, """
        SELECT a.key, a.correction_round, a.proof, v.status, v.reason, v.seconds, v.backend
        FROM attempts a LEFT JOIN verdicts v ON v.attempt_id = a.id ORDER BY a.key""")


def assert_one_verdict_each(db: str) -> None:
    n_attempts = db_rows(db, "SELECT count(*), count(DISTINCT key) FROM attempts")[0]
    assert n_attempts[0] == n_attempts[1], "duplicated attempt keys"
    per = db_rows(db, "SELECT attempt_id, count(*) FROM verdicts GROUP BY attempt_id")
    assert all(c == 1 for _, c in per)
    assert len(per) == n_attempts[0], "attempts without a verdict"


def by_name(result) -> dict[str, tuple[int, int]]:
    return {p["name"]: (p["n"], p["c"]) for p in result.problems}


def squash(text: str) -> str:
    """CLI output without any whitespace (rich wraps long lines)."""
    return "".join(text.split())


@pytest.fixture(scope="module")
def coq():
    from verifier import get_backend

    backend = get_backend("coq", pool_size=2)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def rows(shared_data) -> dict[str, dict]:
    return rocq_rows(shared_data)


# --------------------------------------------------------------------------- 1. hf on CPU


def test_hf_tiny_model_end_to_end_through_the_cli(tmp_path, rows, coq):
    from prover.tiny import build_tiny_model

    first = sorted(rows)[:3]
    corpus = [rows[n]["header"] + rows[n]["formal_statement"] for n in sorted(rows)[:30]]
    model = build_tiny_model(tmp_path / "tiny", corpus=corpus, vocab_size=384, seed=0)
    db = f"sqlite:///{tmp_path}/hf.db"
    report = tmp_path / "report"
    res = RUNNER.invoke(app, [
        "eval", "minif2f", "--itp", "coq", "--backend", "hf", "--model", str(model),
        "--prompt", "coq", "-n", "2", "-k", "1,2", "--temperature", "0.8", "--top-p", "0.9",
        "--max-tokens", "24", "--seed", "3", "--timeout", "20", "--limit", "3",
        "--workers", "1", "--db", db, "--report", str(report)])
    assert res.exit_code == 0, res.output
    assert "pass@k" in res.output

    # attempts and verdicts in the database: 3 problems x 2 samples, each with one verdict
    assert_one_verdict_each(db)
    got = attempt_verdicts(db)
    assert len(got) == 6
    no_proof = [g for g in got if g[2] is None]
    for _key, rnd, proof, status, reason, seconds, backend in got:
        assert rnd == 0 and status in ("proved", "failed", "timeout", "rejected_unsound")
        if proof is None:  # nothing extractable: failed without the verifier
            assert (status, reason, seconds, backend) == ("failed", "no_proof_found", 0.0, "")
        else:
            assert backend == "coq"
    stored = db_rows(db, "SELECT DISTINCT model, sampling FROM attempts")
    assert len(stored) == 1 and stored[0][0] == str(model)
    sampling = stored[0][1] if isinstance(stored[0][1], dict) else json.loads(stored[0][1])
    assert sampling == {"n": 2, "temperature": 0.8, "top_p": 0.9, "max_tokens": 24, "seed": 3}

    # the report: provenance, sampling, verifier, per-problem n and c, the curve
    d = json.loads((report / "report.json").read_text())
    assert d["dataset"]["name"] == "minif2f-rocq" and d["dataset"]["split"] == "test"
    assert d["dataset"]["version"] == (
        "654966d91ab2f045277651a31d3a2a78dea9e02d76b9b22c0301a598010db3d9")
    assert d["dataset"]["file"].endswith("minif2f_rocq.jsonl")
    # named even when no output reached the verifier (a random model rarely writes a proof)
    assert d["verifier"]["backend"] == "coq" and d["verifier"]["version"] == coq.version()
    assert d["verifier"]["sandboxed"] is True and d["verifier"]["timeout_s"] == 20.0
    assert d["model"] == str(model) and d["backend"] == "hf" and d["prompt_format"] == "coq"
    assert d["sampling"] == {"n": 2, "temperature": 0.8, "top_p": 0.9, "max_tokens": 24,
                             "seed": 3, "stop": ["```"]}
    assert [p["k"] for p in d["pass_at_k"]] == [1, 2] and d["pass_at_k_counts"] == "samples"
    assert [(p["name"], p["n"]) for p in d["problems"]] == [(n, 2) for n in first]
    for p in d["problems"]:
        assert 0 <= p["c"] <= 2 and (p["proof"] is not None) == (p["c"] > 0)
    assert d["counts"]["attempts"] == 6 and d["counts"].get("no_proof_found", 0) == len(no_proof)
    md = (report / "report.md").read_text()
    for needle in ("minif2f-rocq", d["dataset"]["version"], "8.16", str(model), "temperature=0.8",
                   "top_p=0.9", "max_tokens=24", "seed=3", *first):
        assert needle in md
    png = (report / "pass_at_k.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


# --------------------------------------------------------------------------- 2. openai


class ScriptedOpenAI:
    """An OpenAI-compatible server on 127.0.0.1 whose answers come from ``answer(text, j)``
    (text: the prompt, or the last user message; j: the sample index). Applies stop strings
    as real servers do and records request bodies."""

    def __init__(self, answer: Callable[[str, int], str]):
        self.bodies: list[tuple[str, dict]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, obj):
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": "scripted-prover"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.bodies.append((self.path, body))
                n, stops = body.get("n", 1), body.get("stop") or []

                def cut(text):
                    ends = [text.find(s) for s in stops if s in text]
                    return text[: min(ends)] if ends else text

                if self.path.endswith("/chat/completions"):
                    text = body["messages"][-1]["content"]
                    choices = [{"index": j, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": cut(answer(text, j))}}
                               for j in range(n)]
                else:
                    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
                    choices = [{"index": i * n + j, "text": cut(answer(p, j)), "finish_reason": "stop"}
                               for i, p in enumerate(prompts) for j in range(n)]
                self._send({"choices": choices,
                            "usage": {"prompt_tokens": 50, "completion_tokens": 20 * len(choices)}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("prompt,via", [("coq", "cli"), ("coq-chat", "library")])
def test_openai_backend_against_a_local_server(tmp_path, rows, coq, prompt, via):
    chat = prompt == "coq-chat"

    def answer(text: str, j: int) -> str:
        if theorem_name(text) != NAT:
            return GARBAGE
        proof = GOOD[NAT] if j == 0 else WRONG[NAT]  # sample 0 right, sample 1 wrong
        return chat_answer(rows[NAT], proof) if chat else continuation(proof)

    server = ScriptedOpenAI(answer)
    db = f"sqlite:///{tmp_path}/oa.db"
    name = import_subset(db, rows, [NAT, OTHER], tmp_path / "mini-rocq.jsonl")
    try:
        if via == "cli":
            res = RUNNER.invoke(app, [
                "eval", name, "--itp", "coq", "--backend", "openai", "--base-url", server.url,
                "--model", "scripted-prover", "--prompt", prompt, "-n", "2", "-k", "1,2",
                "--temperature", "0.7", "--top-p", "0.9", "--max-tokens", "200",
                "--timeout", "20", "--db", db, "--report", str(tmp_path / "rep")])
            assert res.exit_code == 0, res.output
            d = json.loads((tmp_path / "rep" / "report.json").read_text())
        else:
            spec = EvalSpec(benchmark=name, itp="coq", backend="openai", model=None,
                            prompt=prompt, n=2, ks=(1, 2), temperature=0.7, top_p=0.9,
                            max_tokens=200, timeout=20,
                            backend_opts={"base_url": server.url, "backoff": 0.01})
            d = as_dict(run_eval(spec, db=db, checker=in_process_checker(coq, 20)))
    finally:
        server.close()

    assert d["model"] == "scripted-prover"  # named by the server's /models when not given
    problems = {p["name"]: p for p in d["problems"]}
    assert (problems[NAT]["n"], problems[NAT]["c"]) == (2, 1)
    assert (problems[OTHER]["n"], problems[OTHER]["c"]) == (2, 0)
    assert problems[NAT]["proof"] == GOOD[NAT] and problems[OTHER]["proof"] is None
    passk = {p["k"]: p["value"] for p in d["pass_at_k"]}
    assert passk[1] == pytest.approx((0.5 + 0.0) / 2) and passk[2] == pytest.approx(0.5)
    assert d["dataset"]["name"] == name and d["dataset"]["file"].endswith("mini-rocq.jsonl")

    posts = [b for p, b in server.bodies if p != "/v1/models"]
    assert posts and all(p == ("/v1/chat/completions" if chat else "/v1/completions")
                         for p, _ in server.bodies if p != "/v1/models")
    for b in posts:
        assert (b["n"], b["temperature"], b["top_p"], b["max_tokens"]) == (2, 0.7, 0.9, 200)
        assert b.get("stop") == (None if chat else ["```"])
    got = attempt_verdicts(db)
    assert sorted((g[3], g[4]) for g in got) == sorted(
        [("proved", None), ("failed", "error"), ("failed", "no_proof_found"),
         ("failed", "no_proof_found")])


# --------------------------------------------------------------------------- 3. resume


def _eval_args(db: str) -> list[str]:
    return ["eval", "minif2f", "--itp", "coq", "--backend", "portfolio", "-n", "2", "-k", "1,2",
            "--limit", "8", "--timeout", "30", "--db", db]


RESUME_SPEC = {"benchmark": "minif2f", "itp": "coq", "backend": "portfolio", "n": 2,
               "ks": (1, 2), "timeout": 30.0, "limit": 8}


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, coq):
    db = f"sqlite:///{tmp_path}/resume.db"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([str(PROVER), *_eval_args(db), "--report", str(tmp_path / "r0")],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    watcher = sa.create_engine(f"sqlite:///{tmp_path}/resume.db")
    stored = 0
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with watcher.connect() as conn:
                    stored = conn.execute(sa.text("SELECT count(*) FROM attempts")).scalar()
            except sa.exc.OperationalError:  # schema not created yet
                stored = 0
            if stored:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        watcher.dispose()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    assert stored > 0

    before = db_rows(db, "SELECT id, key, created_at, completion, proof_hash FROM attempts "
                         "ORDER BY id")
    verdicts_before = db_rows(db, "SELECT attempt_id, status FROM verdicts ORDER BY attempt_id")
    assert len(verdicts_before) < len(before) == 16, "the run was not interrupted midway"

    # resume in process, watching what is generated and what reaches the verifier
    gen = CountingGenerator(make_generator("portfolio", itp="coq"))
    counting = CountingBackend(coq)
    spec = EvalSpec(**RESUME_SPEC)
    resumed = run_eval(spec, db=db, checker=in_process_checker(counting, 30), generator=gen)
    assert db_rows(db, "SELECT name FROM runs") == [(spec.run_name(),)]  # the same run
    assert gen.calls == 0  # every attempt was already stored: nothing regenerated
    assert len(counting.tasks) == len(before) - len(verdicts_before)  # only the unverified
    after = db_rows(db, "SELECT id, key, created_at, completion, proof_hash FROM attempts "
                        "ORDER BY id")
    assert after == before  # stored rows untouched
    assert db_rows(db, "SELECT attempt_id, status FROM verdicts WHERE attempt_id IN "
                       f"({','.join(str(a) for a, _ in verdicts_before) or '0'}) "
                       "ORDER BY attempt_id") == verdicts_before
    assert_one_verdict_each(db)

    # an uninterrupted run on another database gives the same figures
    full_db = f"sqlite:///{tmp_path}/full.db"
    full = run_eval(EvalSpec(**RESUME_SPEC), db=full_db, checker=in_process_checker(coq, 30))
    assert by_name(resumed) == by_name(full) and len(full.problems) == 8
    assert all(n == 2 for n, _ in by_name(full).values())
    assert sum(c for _, c in by_name(full).values()) > 0  # aime_1989_p8 falls to lra
    assert [(p["k"], p["value"], p["ci_low"], p["ci_high"]) for p in resumed.passk] == [
        (p["k"], p["value"], p["ci_low"], p["ci_high"]) for p in full.passk]
    assert sorted((k.split("/", 2)[2], s) for k, _, _, s, *_ in attempt_verdicts(db)) == sorted(
        (k.split("/", 2)[2], s) for k, _, _, s, *_ in attempt_verdicts(full_db))

    # a third invocation of the finished run (the CLI) changes nothing and reports the same
    verdicts_done = db_rows(db, "SELECT id, attempt_id, status, seconds FROM verdicts ORDER BY id")
    res = RUNNER.invoke(app, [*_eval_args(db), "--report", str(tmp_path / "r2")])
    assert res.exit_code == 0, res.output
    assert db_rows(db, "SELECT id, key, created_at, completion, proof_hash FROM attempts "
                       "ORDER BY id") == before
    assert db_rows(db, "SELECT id, attempt_id, status, seconds FROM verdicts ORDER BY id") == (
        verdicts_done)
    d = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert [p["value"] for p in d["pass_at_k"]] == [p["value"] for p in full.passk]


# --------------------------------------------------------------------------- 4. dedupe


def test_identical_proofs_are_verified_once_and_counted_with_multiplicity(db_url, tmp_path,
                                                                           rows, coq):
    name = import_subset(db_url, rows, [NAT, NAT2, OTHER], tmp_path / "dedupe.jsonl")
    gen = Scripted({
        NAT: [continuation(GOOD[NAT]), continuation(GOOD[NAT]), continuation(WRONG[NAT]),
              "\n" + GOOD[NAT] + "\n```"],  # same proof text as samples 0 and 1
        NAT2: [continuation(WRONG[NAT2])],  # four copies of one wrong proof
    })
    counting = CountingBackend(coq)
    spec = EvalSpec(benchmark=name, itp="coq", backend="scripted", n=4, ks=(1, 2, 4), timeout=20)
    result = run_eval(spec, db=db_url, checker=in_process_checker(counting, 20), generator=gen)

    checked = sorted((theorem_name(t.statement), t.proof) for t in counting.tasks)
    assert checked == sorted([(NAT, GOOD[NAT]), (NAT, WRONG[NAT]), (NAT2, WRONG[NAT2])])
    assert by_name(result) == {NAT: (4, 3), NAT2: (4, 0), OTHER: (4, 0)}
    passk = {p["k"]: p["value"] for p in result.passk}
    assert passk[1] == pytest.approx(0.75 / 3) and passk[4] == pytest.approx(1 / 3)
    assert_one_verdict_each(db_url)
    # every copy carries the verdict of its proof; outputs without a proof never reached it
    verdicts: dict[str | None, set] = {}
    for _key, _r, proof, status, reason, seconds, _b in attempt_verdicts(db_url):
        verdicts.setdefault(proof, set()).add((status, reason))
        if proof is None:
            assert (reason, seconds) == ("no_proof_found", 0.0)
    assert verdicts[GOOD[NAT]] == {("proved", None)}
    assert all(len(v) == 1 for v in verdicts.values())

    # re-running the finished evaluation checks nothing again
    again = CountingBackend(coq)
    rerun = run_eval(spec, db=db_url, checker=in_process_checker(again, 20), generator=gen)
    assert again.tasks == [] and by_name(rerun) == by_name(result)


def test_portfolio_samples_repeat_and_each_distinct_proof_is_checked_once(tmp_path, rows, coq):
    from prover.generation.portfolio import proofs_for

    db = f"sqlite:///{tmp_path}/pf.db"
    name = import_subset(db, rows, [FAILS_FAST], tmp_path / "pf.jsonl")
    variants = proofs_for("coq", rows[FAILS_FAST]["formal_statement"])
    n = len(variants) + 2  # samples n-2 and n-1 repeat variants 0 and 1
    counting = CountingBackend(coq)
    spec = EvalSpec(benchmark=name, itp="coq", backend="portfolio", n=n, ks=(1, n), timeout=20)
    result = run_eval(spec, db=db, checker=in_process_checker(counting, 20))
    assert sorted(t.proof for t in counting.tasks) == sorted(variants)
    status = {}
    for _key, _r, proof, st, *_ in attempt_verdicts(db):
        assert status.setdefault(proof, st) == st
    assert set(status) == set(variants)  # every sample carries its variant's verdict
    expected_c = sum(status[variants[j % len(variants)]] == "proved" for j in range(n))
    assert by_name(result) == {FAILS_FAST: (n, expected_c)}


# --------------------------------------------------------------------------- 5. correction


def test_self_correction_chains(db_url, tmp_path, rows, coq):
    name = import_subset(db_url, rows, [NAT, NAT2, OTHER], tmp_path / "corr.jsonl")
    # Another run proved NAT already: that must not stop this run from correcting it.
    other = Scripted({NAT: [continuation(GOOD[NAT])]}, model="another-model")
    run_eval(EvalSpec(benchmark=name, itp="coq", backend="scripted", model="another-model",
                      n=1, timeout=20),
             db=db_url, checker=in_process_checker(coq, 20), generator=other)

    gen = Scripted(
        first={NAT: [continuation(WRONG[NAT])], NAT2: [continuation(WRONG[NAT2])]},
        fix={NAT: chat_answer(rows[NAT], GOOD[NAT]),  # fixed by the correction turn
             NAT2: chat_answer(rows[NAT2], WRONG[NAT2])},  # the same wrong proof again
    )
    counting = CountingBackend(coq)
    spec = EvalSpec(benchmark=name, itp="coq", backend="scripted", n=1, ks=(1,), rounds=1,
                    timeout=20)
    result = run_eval(spec, db=db_url, checker=in_process_checker(counting, 20), generator=gen)

    # one chain per problem; NAT's chain succeeds in round 1
    assert by_name(result) == {NAT: (1, 1), NAT2: (1, 0), OTHER: (1, 0)}
    assert result.passk[0]["value"] == pytest.approx(1 / 3)
    got = {(theorem_name(t.statement), t.proof) for t in counting.tasks}
    # round 0: two wrong proofs; round 1: NAT's fix. NAT2's repeated proof is not re-checked.
    assert sorted(got) == sorted({(NAT, WRONG[NAT]), (NAT2, WRONG[NAT2]), (NAT, GOOD[NAT])})
    assert len(counting.tasks) == 3

    # every failed chain of an unsolved problem got one correction turn (OTHER: no proof)
    assert len(gen.conversations) == 3
    convs = {theorem_name(c[0]["content"]): c for c in gen.conversations}
    conv = convs[NAT]
    assert [m["role"] for m in conv] == ["user", "assistant", "user"]
    assert conv[0]["content"] == gen.prompts[[theorem_name(p) for p in gen.prompts].index(NAT)]
    assert conv[1]["content"] == continuation(WRONG[NAT])
    turn = conv[2]["content"]
    stored = db_rows(db_url, "SELECT v.messages FROM verdicts v JOIN attempts a ON "
                             "a.id = v.attempt_id WHERE a.proof = :p AND a.statement_id = "
                             "(SELECT id FROM statements WHERE name = :n)", p=WRONG[NAT], n=NAT)
    messages = stored[0][0] if isinstance(stored[0][0], list) else json.loads(stored[0][0])
    assert messages and all(m["text"].strip() in turn for m in messages)
    assert "No applicable tactic" in turn and "<error>discriminate.</error>" in turn
    assert "no proof found" in convs[OTHER][2]["content"]

    rows_ = db_rows(db_url, "SELECT a.key, a.mode, a.correction_round, a.parent_attempt_id, "
                            "a.sample_index, v.status FROM attempts a JOIN verdicts v "
                            "ON v.attempt_id = a.id JOIN runs r ON r.id = a.run_id "
                            "WHERE r.name = :run ORDER BY a.id", run=spec.run_name())
    assert len(rows_) == 6 and sum(r[2] == 1 for r in rows_) == 3
    assert all(r[1] == ("correction" if r[2] else "whole-proof") and r[4] == 0 for r in rows_)
    assert all(r[3] is not None for r in rows_ if r[2] == 1)

    paths = write_report(result, tmp_path / "report")
    d = json.loads(paths["json"].read_text())
    assert d["pass_at_k_counts"] == "chains" and d["self_correction_rounds"] == 1
    assert "chains" in paths["md"].read_text()

    # resuming the finished run generates and checks nothing
    again = CountingBackend(coq)
    gen2 = Scripted(first={}, fix={})
    rerun = run_eval(spec, db=db_url, checker=in_process_checker(again, 20), generator=gen2)
    assert again.tasks == [] and gen2.prompts == [] and gen2.conversations == []
    assert by_name(rerun) == by_name(result)


# --------------------------------------------------------------------------- 7. bad -k


def test_k_larger_than_n_is_a_clear_error(tmp_path):
    db = tmp_path / "never.db"
    res = RUNNER.invoke(app, ["eval", "minif2f", "--itp", "coq", "-n", "4", "-k", "1,8",
                              "--db", f"sqlite:///{db}"])
    assert res.exit_code == 2
    out = squash(res.output)
    assert "-k[8]" in out and "between1andn=4" in out
    assert not db.exists()  # rejected before any work
    res = RUNNER.invoke(app, ["eval", "minif2f", "--itp", "coq", "-k", "one", "--db",
                              f"sqlite:///{db}"])
    assert res.exit_code == 2 and "comma-separatedintegers" in squash(res.output)


# --------------------------------------------------------------------------- edge cases


def test_no_extractable_proof_costs_no_verifier_time_and_the_report_still_names_it(
        tmp_path, rows, coq):
    db = f"sqlite:///{tmp_path}/none.db"
    name = import_subset(db, rows, [NAT, OTHER], tmp_path / "none.jsonl")
    counting = CountingBackend(coq)
    spec = EvalSpec(benchmark=name, itp="coq", backend="scripted", n=3, ks=(1, 3), timeout=20)
    result = run_eval(spec, db=db, checker=in_process_checker(counting, 20),
                      generator=Scripted({}))  # garbage only
    assert counting.tasks == []
    assert {g[3:] for g in attempt_verdicts(db)} == {("failed", "no_proof_found", 0.0, "")}
    assert by_name(result) == {NAT: (3, 0), OTHER: (3, 0)}
    assert result.counts == {"failed": 6, "no_proof_found": 6, "attempts": 6}
    assert result.verifier["backend"] == "coq" and result.verifier["version"] == coq.version()
    d = json.loads(write_report(result, tmp_path / "rep")["json"].read_text())
    assert d["verifier"]["version"] == coq.version()


def test_a_generator_returning_too_few_samples_is_an_error_not_a_smaller_n(tmp_path, rows, coq):
    class Short(Scripted):
        def generate(self, prompts, params, *, progress=None):
            return [cs[:-1] for cs in super().generate(prompts, params)]

    db = f"sqlite:///{tmp_path}/short.db"
    name = import_subset(db, rows, [NAT], tmp_path / "short.jsonl")
    spec = EvalSpec(benchmark=name, itp="coq", backend="scripted", n=2, ks=(1, 2), timeout=20)
    with pytest.raises(RuntimeError,
                       match=r"returned \[1\] completions for 1 prompts \(expected 2 each\)"):
        run_eval(spec, db=db, checker=in_process_checker(coq, 20), generator=Short({}))
    assert db_rows(db, "SELECT count(*) FROM attempts") == [(0,)]
