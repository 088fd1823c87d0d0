"""The Coq backend: warm coqtop sessions for speed, a fresh trusted process for the verdict.

Pipeline of ``verify_batch``:

1. *Prepare*: Rocq 9 spellings are rewritten, the proof's leading ``Require`` sentences are split
   off (they go before the trusted header), and a text prefilter rejects kernel bypasses,
   dangerous vernacular, placeholders and navigation commands.
2. *Screen* each attempt in a warm ``coqtop`` keyed by (proof requires + header) that returns to
   its saved state with ``BackTo`` (``mode="warm"``), or with one ``coqc`` per proof
   (``mode="coqc"``, the naive baseline). Errors, timeouts, memory exhaustion, floods and crashes
   end here. Nothing the screening process prints can make an attempt ``proved``.
3. *Compile* the accepted attempts of one key together into one library (each in its own module;
   on any failure each is compiled alone).
4. *Recheck* per header in a fresh sandboxed coqtop that has touched no proof when it elaborates
   the trusted statements: header, then for each statement ``Module R. <statement> Admitted. End R.
   Definition T := <type of R.name>.``; only then the candidate libraries are ``Require``d (not
   imported), and ``Definition chk : T := <candidate constant>.`` makes the kernel check that the
   candidate proves exactly the trusted statement (up to conversion, which unfolds the header's
   definitions, so a re-defined ``condition`` does not match). ``Print Assumptions chk`` is then
   read from this trusted process; each name is resolved to its full path with ``Locate``; paths
   under the candidate library (axioms declared by the checked text, whatever module names they
   hide in) and paths outside the allowlist are rejected, as are constants the kernel checked with
   guard, positivity or universe checking disabled. Optionally ``coqchk`` re-checks the libraries.
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
from collections.abc import Callable, Sequence
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
            screen = self._screen_warm if self.mode == "warm" else self._screen_coqc
            # Units of work are runs of same-key attempts, so that one warm session serves a run
            # instead of every worker starting its own session for the same libraries.
            by_key: dict[str, list[tuple[tuple, Prepared]]] = {}
            for kp in todo:
                by_key.setdefault(kp[1].key, []).append(kp)
            cap = max(4, -(-len(todo) // self.workers))
            units = [g[i:i + cap] for g in by_key.values() for i in range(0, len(g), cap)]
            units.sort(key=len, reverse=True)
            out_lock = threading.Lock()

            def run_unit(unit: list[tuple[tuple, Prepared]]) -> None:
                for k, p in unit:
                    try:
                        r = screen(p, timeout)
                    except Exception as e:  # infrastructure fault: report, don't crash the batch
                        r = self._verdict(Status.INTERNAL_ERROR, "screen_error",
                                          messages=[Message("error", repr(e))])
                    with out_lock:
                        if isinstance(r, Verdict):
                            results[k] = r
                        else:
                            screened.append((k, r))
                    if self.on_progress is not None:
                        self.on_progress(1)

            list(ex.map(run_unit, units))
            screened.sort(key=lambda kc: order.index(kc[0]))
            self.timings["screen"] += time.monotonic() - t0
            if screened:
                t1 = time.monotonic()
                if self.mode == "warm":
                    self._compile_groups([c for _, c in screened], timeout, ex)
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

    def _screen_warm(self, prep: Prepared, timeout: float) -> Verdict | Candidate:
        t0 = time.monotonic()
        text, body_first = prep.stream_text()
        with self.pool.acquire(prep.key) as s:
            if s.header_errors:
                return self._verdict(
                    Status.FAILED,
                    "header_error",
                    messages=[Message("error", e.text, in_proof=False) for e in s.header_errors[:5]],
                    seconds=time.monotonic() - t0,
                )
            ta = time.monotonic()
            a = s.attempt(text, timeout)
            with self._lock:
                self.timings["attempt"] = self.timings.get("attempt", 0.0) + time.monotonic() - ta
            if a.kind in ("timeout", "flood", "died", "oom"):
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
    def _compile_groups(self, cands: list[Candidate], timeout: float, ex: cf.Executor) -> None:
        groups: dict[str, list[Candidate]] = {}
        for c in cands:
            groups.setdefault(c.prep.key, []).append(c)
        list(ex.map(lambda g: self._compile_group(g, timeout), groups.values()))

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
            n = min(self.workers, max(1, len(ready) // 24))  # each process pays the library load
            chunks = [ready[i::n] for i in range(n)]
            for part in ex.map(lambda g: self._recheck_group(g, timeout), chunks):
                res.update(part)
        return res

    # -- trusted references: the statements elaborated from the trusted header alone
    def _ensure_refs(self, cands: list[Candidate], ex: cf.Executor) -> dict[tuple[str, str], object]:
        with self._lock:
            cache = self.__dict__.setdefault("_refs", {})
        need: dict[str, list[Prepared]] = {}
        for c in cands:
            k = (c.prep.header, c.prep.statement)
            if k not in cache and all(p.statement != c.prep.statement for p in need.get(c.prep.header, [])):
                need.setdefault(c.prep.header, []).append(c.prep)
        jobs = []
        for h, ps in need.items():
            jobs.append(ps)
        for built in ex.map(self._build_refs, jobs):
            with self._lock:
                cache.update(built)
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
        assumptions: dict[int, list[str]] = {}
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
            names: set[str] = set()
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
                r = proc.run(f"Print Assumptions K{n}_{i}.", budget)
                lines = _assumption_lines(r.output)
                bypass = [ln for ln in lines if _BYPASS_LINE.search(ln)]
                if bypass:
                    res[id(c)] = self._verdict(
                        Status.REJECTED_UNSOUND, "kernel_bypass",
                        messages=[Message("error", ln, in_proof=False) for ln in bypass[:5]],
                    )
                    continue
                axs = [ln.split()[0] for ln in lines]
                assumptions[id(c)] = axs
                names.update(axs)
            full: dict[str, str] = {}
            for nm in sorted(names):
                if not re.fullmatch(r"[\w.']+", nm):
                    full[nm] = "?" + nm
                    continue
                r = proc.run(f"Locate {nm}.", budget)
                m = re.search(r"(?m)^(?:Constant|Inductive|Constructor)\s+([\w.']+)", _strip_tags(r.output))
                full[nm] = m.group(1) if m else "?" + nm
        finally:
            proc.close()
        for c in group:
            if id(c) in res:
                continue
            axs = sorted({full[a] for a in assumptions.get(id(c), [])})
            own = [a for a in axs if a.startswith(c.lib_root + ".") or a.startswith("?")]
            bad = [a for a in axs if a not in self.allowed_axioms]
            if own or bad:
                res[id(c)] = self._verdict(
                    Status.REJECTED_UNSOUND, "axiom_not_allowed", axioms=axs,
                    messages=[Message("error", "axioms outside the allowlist: " + ", ".join(own or bad),
                                      in_proof=False)],
                )
            else:
                res[id(c)] = self._verdict(Status.PROVED, None, axioms=axs)
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
        with self.pool.acquire(hreq) as s:
            if s.header_errors:
                return self._verdict(Status.FAILED, "header_error", seconds=time.monotonic() - t0,
                                     messages=[Message("error", e.text, in_proof=False) for e in s.header_errors[:5]])
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
        with self.pool.acquire(prep.key) as s:
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
