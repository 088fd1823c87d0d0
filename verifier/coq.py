"""The Coq backend: warm coqtop sessions for speed, a fresh trusted process for the verdict.

Pipeline of ``verify_batch``:

1. *Prepare*: Rocq 9 spellings are rewritten, the proof's leading ``Require`` sentences are split
   off (they go before the trusted header), and a text prefilter rejects kernel bypasses,
   dangerous vernacular, placeholders and navigation commands.
2. *Screen* each attempt in a warm ``coqtop`` that returns to its saved state with ``BackTo``
   (``mode="warm"``), or with one ``coqc`` per proof (``mode="coqc"``, the naive baseline).
   Errors, timeouts, memory exhaustion, floods and crashes end here. Nothing the screening
   process prints can make an attempt ``proved``. A key is the list of ``Require`` sentences
   (proof's, then header's); a warm session keeps the sentences it has run as a stack with the
   state after each, and moves to the next key by going back to the longest common prefix and
   running the rest, so every worker holds one session for the whole batch instead of one
   process per key. The attempts are sorted by key and cut into one contiguous run per worker
   (a worker that runs out takes attempts from the end of the longest run).
3. *Compile* the accepted attempts of one key together into one library (each in its own module;
   on any failure each is compiled alone). The trusted references (below) are built at the same
   time, one ``coqc`` per header, from trusted text only.
4. *Recheck* in a fresh sandboxed coqtop: the trusted references were elaborated by a process
   that has touched no proof (header, then for each statement ``Module R. <statement> Admitted.
   End R. Definition T := <type of R.name>.``); the recheck process ``Require``s (not imports)
   them and the candidate libraries, and ``Definition chk : T := <candidate constant>.`` makes
   the kernel check that the candidate proves exactly the trusted statement (up to conversion,
   which unfolds the header's definitions, so a re-defined ``condition`` does not match).
   ``Print Assumptions`` is then read from this trusted process, once for all the accepted proofs
   of one statement (through a constant that references each ``chk``, so the answer is the union
   of their assumptions: the traversal of the Reals closure costs ~0.5 s each time); each name is
   resolved to its full path with ``Locate``; paths under a candidate library (axioms declared by
   the checked text, whatever module names they hide in) and paths outside the allowlist are
   rejected, as are constants the kernel checked with guard, positivity or universe checking
   disabled. A union that is not clean is split and each proof is asked about alone, so the
   verdicts are those of one query per proof; a ``proved`` verdict's ``axioms`` are those of the
   proofs of its statement accepted in the same recheck (exact when it is the only one).
   Optionally ``coqchk`` re-checks the libraries.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import re
import secrets
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .coq_session import (
    CoqProcess,
    LexError,
    OutputLimit,
    RawError,
    SessionDied,
    SessionTimeout,
    WarmSession,
    infomsgs,
    key_sentences,
    mask,
    out_of_memory,
    parse_errors,
    raw_to_message,
    rocq_to_coq,
    split_requires,
    theorem_name,
)
from .pool import ProcessPool
from .sandbox import Sandbox, kill_group
from .types import Message, ProofTask, Status, Verdict

# Axioms declared by the installed standard library (Reals, classical logic, ssreflect's
# `under`); Coquelicot and mathcomp declare none. Derived with `coqchk -o` on a file requiring
# Reals, Lra, Psatz, Classical, FunctionalExtensionality, ProofIrrelevance, ClassicalEpsilon,
# PropExtensionality, Eqdep, Coquelicot and mathcomp.ssreflect.
DEFAULT_ALLOWED_AXIOMS: frozenset[str] = frozenset(
    [
        "Coq.Logic.ClassicalEpsilon.constructive_indefinite_description",
        "Coq.Logic.Classical_Prop.classic",
        "Coq.Logic.Description.constructive_definite_description",
        "Coq.Logic.Eqdep.Eq_rect_eq.eq_rect_eq",
        "Coq.Logic.FunctionalExtensionality.functional_extensionality_dep",
        "Coq.Logic.IndefiniteDescription.constructive_indefinite_description",
        "Coq.Logic.ProofIrrelevance.proof_irrelevance",
        "Coq.Logic.PropExtensionality.propositional_extensionality",
        "Coq.Logic.JMeq.JMeq_eq",
        "Coq.Reals.ClassicalDedekindReals.sig_forall_dec",
        "Coq.Reals.ClassicalDedekindReals.sig_not_dec",
        "Coq.Reals.Rdefinitions.RinvImpl.Rinv",
        "Coq.Reals.Rdefinitions.RinvImpl.Rinv_def",
    ]
    + [
        f"Coq.Reals.Rdefinitions.RbaseSymbolsImpl.{n}"
        for n in ["R", "R0", "R0_def", "R1", "R1_def", "Rabst", "Rlt", "Rlt_def", "Rmult", "Rmult_def", "Ropp", "Ropp_def", "Rplus", "Rplus_def", "Rquot1", "Rquot2", "Rrepr"]
    ]
    + [
        f"Coq.ssr.ssrunder.Under_rel.{n}"
        for n in ["Over_rel", "Under_rel", "Under_relE", "Under_rel_from_rel", "over_rel", "over_rel_done", "under_rel_done"]
    ]
)

_UNSOUND = [
    (re.compile(r"\b(Unset|Set)\s+(Guard|Positivity|Universe)\s+Checking\b"), "kernel check disabled"),
    (re.compile(r"\bbypass_check\b"), "#[bypass_check] attribute"),
    (re.compile(r"\bTyping\s+Flags\b"), "typing flags"),
]
_DANGEROUS = re.compile(
    r"(?<![\w.'])(Redirect|Load|Cd|Drop|Declare\s+ML\s+Module|Add\s+(?:Rec\s+)?LoadPath|"
    r"Add\s+ML\s+Path|(?:Separate\s+|Recursive\s+)?Extraction)(?![\w'])"
)
_SORRY = re.compile(r"(?<![\w.'])(Admitted|admit|give_up|Abort)(?![\w'])")
_NAVIGATION = re.compile(r"(?<![\w.'])(Reset|Back|BackTo|Undo|Restart)(?![\w'])")
_BYPASS_LINE = re.compile(
    r"is assumed to be (guarded|positive)|relies on an unsafe|relies on type-in-type|"
    r"unsafe hierarchy|is not checked"
)


@dataclass
class Prepared:
    task: ProofTask
    header: str
    statement: str
    requires: str
    body: str
    body_line_offset: int  # 0-based line of the body inside the original proof
    name: str | None
    key: str
    verdict: Verdict | None = None  # set when the prefilter already decided

    header_rest: str = ""  # the header after its leading Require sentences (sent per attempt)

    def stream_text(self) -> tuple[str, int]:
        """Text sent to a warm session (header rest + statement + body) and the index of the
        body's first line. The session itself has run ``key`` (all leading Requires)."""
        pre = self.header_rest.rstrip("\n") + "\n" if self.header_rest.strip() else ""
        pre += self.statement.rstrip("\n") + "\n"
        return pre + self.body + "\n", pre.count("\n")

    def file_text(self) -> tuple[str, int]:
        """Stand-alone file text and the index of the body's first line."""
        pre = (self.requires + "\n" if self.requires else "") + self.header.rstrip("\n") + "\n"
        pre += self.statement.rstrip("\n") + "\n"
        return pre + self.body + "\n", pre.count("\n")


@dataclass
class Candidate:
    prep: Prepared
    const: str = ""  # fully qualified constant in the compiled library
    lib: str = ""  # library to Require
    lib_root: str = ""  # logical root; anything under it was declared by checked text
    seconds: float = 0.0
    messages: list[Message] = field(default_factory=list)


class CoqBackend:
    name = "coq"

    def __init__(
        self,
        *,
        sandbox: Sandbox | None = None,
        pool_size: int = 1,
        max_uses: int = 200,
        max_rss_bytes: int | None = 3 << 30,
        mode: str = "warm",
        coqtop: str = "coqtop",
        coqc: str = "coqc",
        coqchk: bool = False,
        prefilter: bool = True,
        allowed_axioms: frozenset[str] | None = None,
        output_cap: int = 1 << 20,
        scratch_root: str | Path | None = None,
    ) -> None:
        if mode not in ("warm", "coqc"):
            raise ValueError("mode must be 'warm' or 'coqc'")
        self.sandbox = sandbox if sandbox is not None else Sandbox()
        self.sandbox.check()  # raises SandboxUnavailable unless explicitly disabled
        self.mode = mode
        self.coqtop, self.coqc, self.use_coqchk = coqtop, coqc, coqchk
        self.prefilter = prefilter
        self.allowed_axioms = DEFAULT_ALLOWED_AXIOMS if allowed_axioms is None else allowed_axioms
        self.output_cap = output_cap
        self.workers = max(1, pool_size)
        base = Path(scratch_root) if scratch_root else Path(tempfile.gettempdir())
        self._root = Path(tempfile.mkdtemp(prefix="coqvrf-", dir=base))
        os.chmod(self._root, 0o755)
        self._counter = 0
        self._lock = threading.Lock()
        self._version: str | None = None
        self.pool: ProcessPool[WarmSession] = ProcessPool(
            self._new_session, max_size=self.workers, max_uses=max_uses, max_rss_bytes=max_rss_bytes
        )
        self.timings = {"screen": 0.0, "compile": 0.0, "recheck": 0.0}
        self.on_progress: Callable[[int], None] | None = None  # called as attempts are screened

    # ------------------------------------------------------------------ infrastructure
    def _scratch(self, tag: str) -> Path:
        with self._lock:
            self._counter += 1
            n = self._counter
        d = self._root / f"{tag}{n}"
        d.mkdir(parents=True)
        os.chmod(d, 0o755)
        return d

    def _new_session(self, key: str) -> WarmSession:
        return WarmSession(
            key, self.sandbox, self._scratch("w"), coqtop=self.coqtop, output_cap=self.output_cap
        )

    def version(self) -> str:
        if self._version is None:
            out = subprocess.run([self.coqc, "--version"], capture_output=True, text=True).stdout
            m = re.search(r"version\s+(\S+)", out)
            self._version = m.group(1) if m else out.strip()
        return self._version

    def close(self) -> None:
        self.pool.close()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> CoqBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _verdict(self, status: Status, reason: str | None = None, **kw) -> Verdict:
        return Verdict(
            status=status,
            reason=reason,
            backend=self.name,
            backend_version=self.version(),
            sandboxed=self.sandbox.enabled,
            **kw,
        )

    # ------------------------------------------------------------------ stage 1: prepare
    def prepare(self, task: ProofTask) -> Prepared:
        header = rocq_to_coq(task.header)
        statement = rocq_to_coq(task.statement)
        proof = rocq_to_coq(task.proof)
        requires, body, cut = split_requires(proof)
        p = Prepared(
            task=task,
            header=header,
            statement=statement,
            requires=requires,
            body=body,
            body_line_offset=proof[:cut].count("\n"),
            name=theorem_name(statement),
            key="",
        )
        hreq, p.header_rest, _ = split_requires(header)
        p.key = "\n".join(x for x in (requires, hreq) if x)
        if p.name is None:
            p.verdict = self._verdict(
                Status.INTERNAL_ERROR,
                "bad_statement",
                messages=[Message("error", "statement is not a `Theorem name : ...` sentence", in_proof=False)],
            )
            return p
        try:
            m = mask(body)
        except LexError as e:
            p.verdict = self._verdict(Status.FAILED, "syntax", messages=[Message("error", f"Syntax error: {e}")])
            return p
        if not m.strip():
            p.verdict = self._verdict(Status.FAILED, "no_proof_found", messages=[Message("error", "empty proof")])
            return p
        if not m.rstrip().endswith("."):
            p.verdict = self._verdict(
                Status.FAILED,
                "syntax",
                messages=[Message("error", "the proof does not end with a '.'-terminated sentence")],
            )
            return p
        if not self.prefilter:
            return p
        checks = [(rx, Status.REJECTED_UNSOUND, "kernel_bypass", why) for rx, why in _UNSOUND]
        checks += [
            (_DANGEROUS, Status.REJECTED_UNSOUND, "forbidden_command", "forbidden command"),
            (_SORRY, Status.FAILED, "sorry", "incomplete proof"),
            (_NAVIGATION, Status.FAILED, "navigation_command", "navigation command"),
        ]
        for rx, status, reason, why in checks:
            hit = rx.search(m)
            if hit:
                line = body[: hit.start()].count("\n") + p.body_line_offset + 1
                col = hit.start() - (body.rfind("\n", 0, hit.start()) + 1)
                p.verdict = self._verdict(
                    status, reason, messages=[Message("error", f"{why}: `{hit.group(0)}`", line, col)]
                )
                return p
        return p

    # ------------------------------------------------------------------ public API
    def verify(self, task: ProofTask, *, timeout: float = 60.0) -> Verdict:
        return self.verify_batch([task], timeout=timeout)[0]

    def verify_batch(self, tasks: Sequence[ProofTask], *, timeout: float = 60.0) -> list[Verdict]:
        preps: dict[tuple[str, str, str], Prepared] = {}
        order: list[tuple[str, str, str]] = []
        for t in tasks:
            k = (t.header, t.statement, t.proof)
            order.append(k)
            if k not in preps:
                preps[k] = self.prepare(t)
        results: dict[tuple[str, str, str], Verdict] = {}
        todo = [(k, p) for k, p in preps.items() if p.verdict is None]
        for k, p in preps.items():
            if p.verdict is not None:
                results[k] = p.verdict
        screened: list[tuple[tuple, Candidate]] = []
        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(max_workers=self.workers) as ex:
            out_lock = threading.Lock()

            def record(k: tuple, r: Verdict | Candidate) -> None:
                with out_lock:
                    if isinstance(r, Verdict):
                        results[k] = r
                    else:
                        screened.append((k, r))
                if self.on_progress is not None:
                    self.on_progress(1)

            if self.mode == "warm":
                self._screen_all_warm(todo, timeout, ex, record)
            else:
                def one(kp: tuple[tuple, Prepared]) -> None:
                    try:
                        r = self._screen_coqc(kp[1], timeout)
                    except Exception as e:  # infrastructure fault: report, don't crash the batch
                        r = self._verdict(Status.INTERNAL_ERROR, "screen_error",
                                          messages=[Message("error", repr(e))])
                    record(kp[0], r)

                list(ex.map(one, todo))
            position: dict[tuple, int] = {}
            for i, k in enumerate(order):
                position.setdefault(k, i)
            screened.sort(key=lambda kc: position[kc[0]])
            self.timings["screen"] += time.monotonic() - t0
            if screened:
                t1 = time.monotonic()
                cands = [c for _, c in screened]
                # the candidate libraries (warm mode) and the trusted references are independent:
                # build them side by side, largest first
                jobs: list[tuple[int, Callable[[], None]]] = []
                if self.mode == "warm":
                    for g in self._compile_plan(cands):
                        jobs.append((len(g), lambda g=g: self._compile_group(g, timeout)))
                for ps in self._refs_plan(cands):
                    jobs.append((len(ps), lambda ps=ps: self._store_refs(self._build_refs(ps))))
                jobs.sort(key=lambda j: -j[0])
                for f in [ex.submit(fn) for _, fn in jobs]:
                    f.result()
                self.timings["compile"] += time.monotonic() - t1
                t2 = time.monotonic()
                rech = self._recheck_all([c for _, c in screened], timeout, ex)
                self.timings["recheck"] += time.monotonic() - t2
                for k, c in screened:
                    results[k] = rech[id(c)]
        out = []
        for k in order:
            v = results[k]
            out.append(dataclasses.replace(v, messages=list(v.messages), axioms=list(v.axioms)))
        return out

    # ------------------------------------------------------------------ stage 2: screening
    def _messages(self, errs: list[RawError], prep: Prepared, text: str, body_first: int, file_mode: bool):
        lines = text.split("\n")
        return [
            raw_to_message(
                e,
                text_lines=lines,
                body_first=body_first,
                body_line_offset=prep.body_line_offset,
                file_mode=file_mode,
            )
            for e in errs[:20]
        ]

    @contextmanager
    def session(self, key: str) -> Iterator[tuple[WarmSession, list[RawError]]]:
        """A warm session positioned after the ``Require`` sentences of ``key`` (a prepared
        task's ``key``) and the errors they raised. All sessions share one pool key: a session
        loads only the sentences in which ``key`` differs from what it holds."""
        with self.pool.acquire("") as s:
            yield s, self._enter(s, key)

    def _enter(self, s: WarmSession, key: str) -> list[RawError]:
        t0 = time.monotonic()
        try:
            return s.enter(key_sentences(key))
        finally:
            self._add_time("load", time.monotonic() - t0)

    def _add_time(self, name: str, secs: float) -> None:
        with self._lock:
            self.timings[name] = self.timings.get(name, 0.0) + secs

    def _screen_all_warm(self, todo: list[tuple[tuple, Prepared]], timeout: float, ex: cf.Executor,
                         record: Callable[[tuple, Verdict | Candidate], None]) -> None:
        """Screen in warm sessions, one per worker, held for the whole batch. The attempts are
        sorted by their ``Require`` sentences and cut into one contiguous run per worker, so a
        session walks through neighbouring keys (reloading only the sentences that differ); a
        worker that runs out takes attempts from the end of the longest remaining run."""
        items = sorted(range(len(todo)), key=lambda i: (key_sentences(todo[i][1].key), i))
        n = max(1, min(self.workers, len(items)))
        size = -(-len(items) // n)
        runs = [deque(todo[i] for i in items[j * size:(j + 1) * size]) for j in range(n)]
        lock = threading.Lock()

        def take(w: int) -> tuple[tuple, Prepared] | None:
            with lock:
                if runs[w]:
                    return runs[w].popleft()
                victim = max(runs, key=len)
                return victim.pop() if victim else None

        def worker(w: int) -> None:
            held = None  # (context manager, session)
            try:
                while (item := take(w)) is not None:
                    k, p = item
                    if held is not None and (held[1].uses >= self.pool.max_uses or not held[1].alive()):
                        held[0].__exit__(None, None, None)  # the pool recycles or replaces it
                        held = None
                    try:
                        if held is None:
                            cm = self.pool.acquire("")
                            held = (cm, cm.__enter__())
                        r = self._screen_in(held[1], p, timeout)
                    except Exception as e:  # infrastructure fault: report, don't crash the batch
                        r = self._verdict(Status.INTERNAL_ERROR, "screen_error",
                                          messages=[Message("error", repr(e))])
                        if held is not None:
                            self.pool.discard(held[1])
                    if held is not None and getattr(held[1], "_pool_discarded", False):
                        held[0].__exit__(None, None, None)
                        held = None
                    record(k, r)
            finally:
                if held is not None:
                    held[0].__exit__(None, None, None)

        list(ex.map(worker, range(n)))

    def _screen_warm(self, prep: Prepared, timeout: float) -> Verdict | Candidate:
        with self.pool.acquire("") as s:
            return self._screen_in(s, prep, timeout)

    def _screen_in(self, s: WarmSession, prep: Prepared, timeout: float) -> Verdict | Candidate:
        """Screen one attempt in session ``s``; discards ``s`` if it cannot be reused."""
        t0 = time.monotonic()
        text, body_first = prep.stream_text()
        try:
            key_errors = self._enter(s, prep.key)
        except (SessionTimeout, OutputLimit, SessionDied):
            self.pool.discard(s)
            raise
        if key_errors:
            return self._verdict(
                Status.FAILED,
                "header_error",
                messages=[Message("error", e.text, in_proof=False) for e in key_errors[:5]],
                seconds=time.monotonic() - t0,
            )
        ta = time.monotonic()
        a = s.attempt(text, timeout)
        self._add_time("check", a.check_seconds)
        self._add_time("reset", time.monotonic() - ta - a.check_seconds)
        if a.kind in ("timeout", "flood", "died", "oom") or not s.alive():
            self.pool.discard(s)
        return self._classify(prep, a.kind, a.errors, a.output, text, body_first, False, time.monotonic() - t0, a.returncode)

    def _classify(self, prep, kind, errs, output, text, body_first, file_mode, secs, rc=None):
        if kind == "timeout":
            return self._verdict(Status.TIMEOUT, "timeout", seconds=secs)
        if kind == "flood":
            return self._verdict(
                Status.FAILED, "output_limit", seconds=secs,
                messages=[Message("error", f"output exceeded {self.output_cap} bytes")],
            )
        if kind == "oom":
            return self._verdict(
                Status.RESOURCE_LIMIT, "memory", seconds=secs,
                messages=[Message("error", "out of memory (address-space limit)")],
            )
        if kind == "died":
            return self._verdict(
                Status.FAILED, "crash", seconds=secs,
                messages=[Message("error", f"the prover process died (exit status {rc})")],
            )
        if kind == "error":
            msgs = self._messages(errs, prep, text, body_first, file_mode)
            if any("Stack overflow" in e.text for e in errs):
                return self._verdict(Status.RESOURCE_LIMIT, "stack_overflow", messages=msgs, seconds=secs)
            if any(out_of_memory(e.text) for e in errs):
                return self._verdict(Status.RESOURCE_LIMIT, "memory", messages=msgs, seconds=secs)
            return self._verdict(Status.FAILED, "error", messages=msgs, seconds=secs)
        if kind == "open":
            return self._verdict(
                Status.FAILED, "incomplete_proof", seconds=secs,
                messages=[Message("error", "the proof is not closed with Qed or Defined")],
            )
        return Candidate(prep, seconds=secs)

    def _screen_coqc(self, prep: Prepared, timeout: float) -> Verdict | Candidate:
        """Naive mode: one fresh coqc per proof; its .vo is the candidate library."""
        t0 = time.monotonic()
        d = self._scratch("n")
        lib_root = "Vrf" + secrets.token_hex(4)
        text, body_first = prep.file_text()
        (d / "Att.v").write_text(text)
        kind, out, rc = self._run_coqc(d, lib_root, "Att.v", timeout)
        errs = parse_errors(out) if kind == "error" else []
        r = self._classify(prep, kind, errs, out, text, body_first, True, time.monotonic() - t0, rc)
        if isinstance(r, Candidate):
            r.lib, r.lib_root, r.const = f"{lib_root}.Att", lib_root, f"{lib_root}.Att.{prep.name}"
            r.lib_dir = d  # type: ignore[attr-defined]
        return r

    def _run_coqc(self, d: Path, lib_root: str, fname: str, timeout: float) -> tuple[str, str, int | None]:
        proc = self.sandbox.popen(
            [self.coqc, "-q", "-Q", str(d), lib_root, str(d / fname)],
            d,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=0,
        )
        out, kind = _read_capped(proc, timeout, self.output_cap)
        rc = proc.returncode
        if kind == "ok":
            if rc == 0 and (d / fname).with_suffix(".vo").exists():
                return "ok", out, rc
            if out_of_memory(out) or rc in (-6, 134):
                return "oom", out, rc
            if rc is not None and rc < 0:
                return "died", out, rc
            if not parse_errors(out):
                out += "\nError: coqc failed"
            return "error", out, rc
        return kind, out, rc

    # ------------------------------------------------------------------ stage 3: compile
    def _compile_plan(self, cands: list[Candidate]) -> list[list[Candidate]]:
        groups: dict[str, list[Candidate]] = {}
        for c in cands:
            groups.setdefault(c.prep.key, []).append(c)
        return list(groups.values())

    def _compile_group(self, group: list[Candidate], timeout: float) -> None:
        d = self._scratch("c")
        lib_root = "Vrf" + secrets.token_hex(4)
        tag = secrets.token_hex(4)
        p0 = group[0].prep
        parts = [(p0.requires + "\n" if p0.requires else "") + p0.header.rstrip("\n") + "\n"]
        for i, c in enumerate(group):
            parts.append(f"Module C{tag}_{i}.\n{c.prep.statement.rstrip()}\n{c.prep.body}\nEnd C{tag}_{i}.\n")
        (d / "Bat.v").write_text("".join(parts))
        kind, out, _ = self._run_coqc(d, lib_root, "Bat.v", timeout * len(group) + 60)
        if kind == "ok":
            for i, c in enumerate(group):
                c.lib, c.lib_root = f"{lib_root}.Bat", lib_root
                c.const = f"{lib_root}.Bat.C{tag}_{i}.{c.prep.name}"
                c.lib_dir = d  # type: ignore[attr-defined]
            return
        for c in group:  # something in the shared file failed: compile each one alone
            r = self._screen_coqc(c.prep, timeout)
            if isinstance(r, Candidate):
                c.lib, c.lib_root, c.const = r.lib, r.lib_root, r.const
                c.lib_dir = r.lib_dir  # type: ignore[attr-defined]
            else:
                c.failed = r  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ stage 4: recheck
    def _recheck_all(self, cands: list[Candidate], timeout: float, ex: cf.Executor) -> dict[int, Verdict]:
        res: dict[int, Verdict] = {}
        live: list[Candidate] = []
        for c in cands:
            if getattr(c, "failed", None) is not None:
                res[id(c)] = c.failed  # type: ignore[attr-defined]
            else:
                live.append(c)
        refs = self._ensure_refs(live, ex)
        ready = []
        for c in live:
            r = refs[(c.prep.header, c.prep.statement)]
            if isinstance(r, Verdict):
                res[id(c)] = dataclasses.replace(r)
            else:
                c.ref = r  # type: ignore[attr-defined]
                ready.append(c)
        if ready:
            # One process per worker at most: each pays the library load (~0.5 s), and the
            # assumption check costs one traversal per statement (up to ~0.5 s over R), so
            # statements are dealt out whole, about two per process at the least.
            by_stmt: dict[tuple, list[Candidate]] = {}
            for c in ready:
                by_stmt.setdefault((c.prep.header, c.prep.statement), []).append(c)
            stmts = list(by_stmt.values())
            n = min(self.workers, max(1, len(stmts) // 2))
            chunks: list[list[Candidate]] = [[] for _ in range(n)]
            for i, g in enumerate(stmts):
                chunks[i % n].extend(g)
            for part in ex.map(lambda g: self._recheck_group(g, timeout), chunks):
                res.update(part)
        return res

    # -- trusted references: the statements elaborated from the trusted header alone
    def _refs_plan(self, cands: list[Candidate]) -> list[list[Prepared]]:
        """The statements without a trusted reference yet, one list per header."""
        with self._lock:
            cache = self.__dict__.setdefault("_refs", {})
        need: dict[str, list[Prepared]] = {}
        for c in cands:
            k = (c.prep.header, c.prep.statement)
            if k not in cache and all(p.statement != c.prep.statement for p in need.get(c.prep.header, [])):
                need.setdefault(c.prep.header, []).append(c.prep)
        return list(need.values())

    def _store_refs(self, built: dict[tuple[str, str], object]) -> None:
        with self._lock:
            self.__dict__.setdefault("_refs", {}).update(built)

    def _ensure_refs(self, cands: list[Candidate], ex: cf.Executor) -> dict[tuple[str, str], object]:
        for built in ex.map(self._build_refs, self._refs_plan(cands)):
            self._store_refs(built)
        with self._lock:
            cache = self.__dict__["_refs"]
            return {(c.prep.header, c.prep.statement): cache[(c.prep.header, c.prep.statement)] for c in cands}

    def _build_refs(self, preps: list[Prepared]) -> dict[tuple[str, str], object]:
        """Compile ``header + (Module R. statement Admitted. End R. Definition T := type)``* in a
        process that sees only trusted text; on failure, one file per statement."""
        d = self._scratch("ref")
        root = "Ref" + secrets.token_hex(4)
        n = secrets.token_hex(4)
        parts = [preps[0].header.rstrip("\n") + "\n"]
        for i, p in enumerate(preps):
            parts.append(
                f"Module R{n}_{i}.\n{p.statement.rstrip()}\nAdmitted.\nEnd R{n}_{i}.\n"
                f"Definition T{n}_{i} := ltac:(let t := type of @R{n}_{i}.{p.name} in exact t).\n"
            )
        (d / "Ref.v").write_text("".join(parts))
        kind, out, _ = self._run_coqc(d, root, "Ref.v", 600)
        if kind == "ok":
            return {
                (p.header, p.statement): (d, root, f"{root}.Ref", f"{root}.Ref.T{n}_{i}")
                for i, p in enumerate(preps)
            }
        if len(preps) > 1:
            res: dict[tuple[str, str], object] = {}
            for p in preps:
                res.update(self._build_refs([p]))
            return res
        errs = parse_errors(out)
        msg = errs[0].text if errs else out[-500:]
        return {(preps[0].header, preps[0].statement): self._verdict(
            Status.FAILED, "statement_error", messages=[Message("error", msg, in_proof=False)])}

    def _recheck_group(self, group: list[Candidate], timeout: float) -> dict[int, Verdict]:
        t0 = time.monotonic()
        try:
            res = self._recheck(group, timeout)
        except (SessionTimeout, SessionDied, OutputLimit) as e:
            if len(group) > 1:
                res = {}
                for c in group:
                    res.update(self._recheck_group([c], timeout))
                return res
            status = Status.TIMEOUT if isinstance(e, SessionTimeout) else Status.INTERNAL_ERROR
            res = {id(group[0]): self._verdict(status, "recheck_" + type(e).__name__,
                                               messages=[Message("error", f"recheck failed: {e}")])}
        share = (time.monotonic() - t0) / len(group)
        for c in group:
            v = res[id(c)]
            v.seconds = c.seconds + share
        return res

    def _recheck(self, group: list[Candidate], timeout: float) -> dict[int, Verdict]:
        """One fresh trusted coqtop: Require the trusted references and the candidate libraries
        (nothing is elaborated from untrusted text here), let the kernel check
        ``K : T_ref := candidate``, and read Print Assumptions K."""
        dirs: dict[str, str] = {}
        for c in group:
            dirs[str(c.lib_dir)] = c.lib_root  # type: ignore[attr-defined]
            dirs[str(c.ref[0])] = c.ref[1]  # type: ignore[attr-defined]
        sb = dataclasses.replace(self.sandbox, ro_binds=self.sandbox.ro_binds + tuple(sorted(dirs)))
        args: list[str] = []
        for dd, root in sorted(dirs.items()):
            args += ["-Q", dd, root]
        n = secrets.token_hex(6)
        proc = CoqProcess(sb, self._scratch("r"), coqtop=self.coqtop, args=tuple(args),
                          output_cap=self.output_cap * 4)
        res: dict[int, Verdict] = {}
        budget = 120.0 + 10.0 * len(group)
        try:
            libs = sorted({c.ref[2] for c in group} | {c.lib for c in group})  # type: ignore[attr-defined]
            r = proc.run("Require " + " ".join(libs) + ".", budget)
            errs = parse_errors(r.output)
            if errs:
                if len(group) > 1:
                    raise SessionDied("library load failed", r.output)
                return {id(group[0]): self._verdict(
                    Status.INTERNAL_ERROR, "recheck_load",
                    messages=[Message("error", errs[0].text, in_proof=False)])}
            valid: list[tuple[Candidate, str]] = []
            for i, c in enumerate(group):
                r = proc.run(f"Definition K{n}_{i} : {c.ref[3]} := {c.const}.", budget)  # type: ignore[attr-defined]
                errs = parse_errors(r.output)
                if errs:
                    res[id(c)] = self._verdict(
                        Status.REJECTED_UNSOUND, "statement_mismatch",
                        messages=[Message("error", "the proof does not establish the trusted statement: "
                                          + errs[0].text, in_proof=False)],
                    )
                    continue
                valid.append((c, f"K{n}_{i}"))
            # Print Assumptions walks the whole dependency closure, which for anything over R is
            # most of the Reals library (~0.5 s each time): the proofs of one statement are asked
            # about together, through one constant that references all of them, whose
            # assumptions are the union of theirs. A union inside the allowlist clears each of
            # them; otherwise the group is split and each proof is asked about alone.
            by_stmt: dict[str, list[tuple[Candidate, str]]] = {}
            for c, kn in valid:
                by_stmt.setdefault(c.ref[3], []).append((c, kn))  # type: ignore[attr-defined]
            todo = list(by_stmt.values())
            full: dict[str, str] = {}
            j = 0
            while todo:
                found: list[tuple[list[tuple[Candidate, str]], list[str]]] = []
                split: list[list[tuple[Candidate, str]]] = []
                for g in todo:
                    target = g[0][1]
                    if len(g) > 1:
                        j += 1
                        target = f"G{n}_{j}"
                        tup = "tt"
                        for _, kn in reversed(g):
                            tup = f"({kn}, {tup})"
                        if parse_errors(proc.run(f"Definition {target} := {tup}.", budget).output):
                            split += [[x] for x in g]
                            continue
                    lines = _assumption_lines(proc.run(f"Print Assumptions {target}.", budget).output)
                    bypass = [ln for ln in lines if _BYPASS_LINE.search(ln)]
                    if bypass and len(g) > 1:
                        split += [[x] for x in g]
                    elif bypass:
                        res[id(g[0][0])] = self._verdict(
                            Status.REJECTED_UNSOUND, "kernel_bypass",
                            messages=[Message("error", ln, in_proof=False) for ln in bypass[:5]],
                        )
                    else:
                        found.append((g, [ln.split()[0] for ln in lines]))
                for nm in sorted({a for _, axs in found for a in axs} - set(full)):
                    if not re.fullmatch(r"[\w.']+", nm):
                        full[nm] = "?" + nm
                        continue
                    r = proc.run(f"Locate {nm}.", budget)
                    m = re.search(r"(?m)^(?:Constant|Inductive|Constructor)\s+([\w.']+)", _strip_tags(r.output))
                    full[nm] = m.group(1) if m else "?" + nm
                for g, names in found:
                    axs = sorted({full[a] for a in names})
                    roots = {c.lib_root + "." for c, _ in g}
                    own = [a for a in axs if a.startswith("?") or any(a.startswith(rt) for rt in roots)]
                    bad = [a for a in axs if a not in self.allowed_axioms]
                    if (own or bad) and len(g) > 1:
                        split += [[x] for x in g]
                        continue
                    for c, _ in g:
                        if own or bad:
                            res[id(c)] = self._verdict(
                                Status.REJECTED_UNSOUND, "axiom_not_allowed", axioms=axs,
                                messages=[Message("error", "axioms outside the allowlist: "
                                                  + ", ".join(own or bad), in_proof=False)],
                            )
                        else:
                            res[id(c)] = self._verdict(Status.PROVED, None, axioms=axs)
                todo = split
        finally:
            proc.close()
        if self.use_coqchk:
            self._coqchk(group, res, timeout)
        return res

    def _coqchk(self, group: list[Candidate], res: dict[int, Verdict], timeout: float) -> None:
        for c in group:
            v = res[id(c)]
            if v.status is not Status.PROVED:
                continue
            d = c.lib_dir  # type: ignore[attr-defined]
            scratch = self._scratch("k")
            sb = dataclasses.replace(self.sandbox, ro_binds=self.sandbox.ro_binds + (str(d),))
            proc = sb.popen(
                ["coqchk", "-silent", "-norec", c.lib, "-Q", str(d), c.lib_root],
                scratch, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0,
            )
            out, kind = _read_capped(proc, 120 + timeout, self.output_cap)
            if kind != "ok" or proc.returncode != 0:
                res[id(c)] = self._verdict(
                    Status.REJECTED_UNSOUND, "kernel_recheck_failed", axioms=v.axioms,
                    messages=[Message("error", "coqchk: " + out[-500:], in_proof=False)],
                )

    # ------------------------------------------------------------------ statements and goals
    def check_statement(self, header: str, statement: str, *, timeout: float = 60.0) -> Verdict:
        header, statement = rocq_to_coq(header), rocq_to_coq(statement)
        t0 = time.monotonic()
        hreq, rest, _ = split_requires(header)
        pre = rest.rstrip("\n") + "\n" if rest.strip() else ""
        stmt_first = pre.count("\n")
        text = pre + statement.rstrip("\n") + "\nAdmitted.\n"
        with self.session(hreq) as (s, key_errors):
            if key_errors:
                return self._verdict(Status.FAILED, "header_error", seconds=time.monotonic() - t0,
                                     messages=[Message("error", e.text, in_proof=False) for e in key_errors[:5]])
            a = s.attempt(text, timeout)
            if a.kind in ("timeout", "flood", "died", "oom"):
                self.pool.discard(s)
        secs = time.monotonic() - t0
        if a.kind == "ok":
            return self._verdict(Status.PROVED, None, seconds=secs)
        if a.kind == "error":
            lines = text.split("\n")
            msgs = []
            for e in a.errors[:10]:
                m = raw_to_message(e, text_lines=lines, body_first=len(lines) + 1, body_line_offset=0, file_mode=False)
                if m.line is not None:  # lines relative to the statement
                    m = dataclasses.replace(m, line=m.line - stmt_first if m.line > stmt_first else m.line)
                msgs.append(m)
            return self._verdict(Status.FAILED, "statement_error", messages=msgs, seconds=secs)
        status = {"timeout": Status.TIMEOUT, "oom": Status.RESOURCE_LIMIT}.get(a.kind, Status.FAILED)
        return self._verdict(status, a.kind, seconds=secs)

    def open_goals(self, header: str, statement: str, proof_prefix: str, *, timeout: float = 60.0) -> list[str]:
        """The goals left open after ``proof_prefix``, each as a closed proposition (hypotheses
        reverted into ``forall``/``->``), printed with the header's notations. [] on error."""
        task = ProofTask(header, statement, proof_prefix.rstrip() + "\n")
        prep = self.prepare(task)
        if prep.name is None:
            return []
        if prep.verdict is not None and prep.verdict.reason not in ("sorry",):
            return []
        tag = "GOAL" + secrets.token_hex(6)
        after = (
            "Set Printing Width 100000.\n"
            "all: (repeat match goal with H : _ |- _ => revert H end).\n"
            f'all: match goal with |- ?G => idtac "{tag}" G end.\n'
        )
        text, _ = prep.stream_text()
        with self.session(prep.key) as (s, key_errors):
            if key_errors:
                return []
            a = s.attempt(text, timeout, after=after)
            if a.kind in ("timeout", "flood", "died", "oom"):
                self.pool.discard(s)
        if a.kind not in ("open",):
            return []
        goals = []
        for msg in infomsgs(a.output):
            msg = msg.strip()
            if msg.startswith(tag):
                g = " ".join(msg[len(tag):].split())
                if g.startswith("(") and g.endswith(")") and _balanced(g[1:-1]):
                    g = g[1:-1]
                goals.append(g)
        return goals


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def _strip_tags(out: str) -> str:
    out = re.sub(r"<prompt>.*?</prompt>", "", out, flags=re.DOTALL)
    return re.sub(r"</?(infomsg|warning)>", "", out)


def _assumption_lines(out: str) -> list[str]:
    """Column-0 lines of a Print Assumptions answer that name an assumption (or a bypass)."""
    text = _strip_tags(out)
    lines = []
    for ln in text.splitlines():
        if not ln.strip() or ln[0].isspace():
            continue
        if ln.startswith(("Axioms:", "Closed under the global context", "Section Variables:",
                          "Opaque constants:", "Transparent constants:", "Fetching opaque proofs")):
            continue
        lines.append(ln.strip())
    return lines


def _read_capped(proc: subprocess.Popen, timeout: float, cap: int) -> tuple[str, str]:
    """Read a process's stdout until EOF with a deadline and a size cap; kill it on either."""
    fd = proc.stdout.fileno()
    buf = bytearray()
    deadline = time.monotonic() + timeout
    kind = "ok"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            kind = "timeout"
            break
        r, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not r:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        buf += chunk
        if len(buf) > cap:
            kind = "flood"
            break
    if kind != "ok":
        kill_group(proc)
    else:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            kind = "timeout"
        proc.stdout.close()
    return buf[-200000:].decode(errors="replace"), kind
