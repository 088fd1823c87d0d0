"""Lean 4 backend: warm REPL processes, and the soundness ladder a proof must climb.

Environments (one REPL process, key = the header's normalized imports)::

    env 0   imports                      (trusted; once per process, import timeout)
    env r   header rest: options, opens  (trusted; once per distinct rest, on env 0)
    env s   theorem prover_ref_<id> <statement signature> := sorry
                                         (trusted; once per distinct statement, on env r)
    env k   helpers + statement + proof  (untrusted; on env s)
    env k+1 follow-up check              (trusted text, on env k)

The rest of the header is elaborated as its own command rather than folded into env 0 so
that headers differing only in options/opens share processes; the REPL carries the scope
(opens, options) of an environment into every command run on it.

The ladder (a proof failing any step is never ``proved``):

(d) text prefilter, before Lean sees anything: commands that can bypass the kernel, run
    arbitrary code at elaboration time, change the syntax of what follows, or import modules
    → ``rejected_unsound``; ``exact?``/``apply?`` → ``failed``.
(a) the proof command's own reply: any error, any ``sorries`` entry, any "declaration uses
    sorry" warning (``admit`` shows only as that warning) → ``failed``.
(b)+(c) one follow-up command, text built here, run on the proof's environment::

        set_option debug.skipKernelTC false in
        theorem _root_.prover_chk_<nonce> : type_of% @_root_.prover_ref_<id> := @_root_.<name>
        #print axioms _root_.prover_chk_<nonce>

    ``prover_ref_<id>``'s type was elaborated in env s from the trusted text alone, before
    any untrusted text existed, so no notation, instance, ``open``, ``variable`` or definition
    of the proof can have influenced it. The kernel then checks that ``<name>`` (the theorem
    the trusted statement declared) inhabits exactly that type: an extra hypothesis smuggled
    in with ``variable``/``include``, a namespace that renamed the theorem, or a statement
    whose notation the helpers redefined all fail here → ``rejected_unsound``
    (statement_mismatch). If the elaborator had to insert anything to make the types agree
    (a coercion from an instance the proof declared), that term is part of
    ``prover_chk_<nonce>`` and its axioms are printed with it.

    ``#print axioms`` then lists what ``prover_chk_<nonce>`` depends on: ``sorryAx`` →
    ``failed``; ``Lean.ofReduceBool``/``Lean.trustCompiler`` (``native_decide``) →
    ``rejected_unsound`` unless allow_native_decide; anything beyond propext,
    Classical.choice, Quot.sound → ``rejected_unsound``.

Why the proof cannot forge the follow-up's answer: the REPL answers each request with its own
JSON reply, and a command's messages (including any ``#print``/``IO.println`` output of the
proof) go into the reply of *that* command. The follow-up reply is read as the next reply
after the proof's, must carry the next environment number in the REPL's sequence, and must
contain the ``#print axioms`` line for ``prover_chk_<nonce>`` at the position of our own
command, with a nonce drawn after the proof was sent. Output written to the process's stdout
by other means (which needs code execution: prefiltered) breaks the sequence and is
reported as a protocol error, never as a verdict.

Residual risk: a proof that runs code during elaboration could rewrite the environment
(``addDecl`` without kernel checking, ``modifyEnv``) so that ``#print axioms`` or the reference
constant lie. Every way we know to run such code is prefiltered, but the prefilter is a text
filter. The strongest guard is to replay the assembled file in a fresh ``lean`` process
(``fresh_replay=True``, needs a real toolchain), whose environment never saw the REPL's
state, and, beyond that, lean4checker over the compiled module (not wired here).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

from verifier.lean import protocol
from verifier.lean.header import (
    Assembly,
    HeaderParts,
    Statement,
    StatementError,
    assemble,
    header_namespace,
    parse_statement,
    pool_key,
    qualified_name,
    scan,
    split_header,
)
from verifier.lean.protocol import Interpretation, Outcome, ReplMessage
from verifier.lean.repl import (
    ReplCrashed,
    ReplError,
    ReplProcess,
    ReplProtocolError,
    ReplTimeout,
    wrap_command,
)
from verifier.pool import ProcessPool
from verifier.sandbox import Limits, Sandbox, SandboxUnavailable, kill_group
from verifier.types import Message, ProofTask, Status, Verdict

STANDARD_AXIOMS = frozenset({"propext", "Classical.choice", "Quot.sound"})
NATIVE_AXIOMS = frozenset({"Lean.ofReduceBool", "Lean.ofReduceNat", "Lean.trustCompiler"})
SORRY_AXIOM = "sorryAx"

DEFAULT_IMPORT_TIMEOUT = 300.0
MIN_FOLLOWUP_TIMEOUT = 30.0
LEAN_ADDRESS_SPACE = 12 << 30  # Mathlib's .olean files are mapped into memory


# --------------------------------------------------------------------------- prefilter

_B = r"(?<![\w.'!?])"  # not preceded by an identifier character
_E = r"(?![\w'!?])"  # not followed by one

# (pattern, status, reason). Matched on the raw untrusted text, comments included: a
# comment that mentions a banned word costs a false rejection, never a false acceptance
# caused by a difference between our comment lexer and Lean's.
_RULES: list[tuple[re.Pattern[str], Status, str]] = [
    (re.compile(p, re.MULTILINE), st, reason)
    for p, st, reason in [
        (r"debug\.skipKernelTC|set_option\s+debug\.", Status.REJECTED_UNSOUND, "kernel_bypass"),
        (_B + r"(?:implemented_by|extern|csimp)" + _E, Status.REJECTED_UNSOUND, "kernel_bypass"),
        (r"#exit\b", Status.REJECTED_UNSOUND, "kernel_bypass"),
        (_B + r"open\s+private" + _E, Status.REJECTED_UNSOUND, "kernel_bypass"),
        (
            r"#eval|#exec|#run" + _E + "|"
            + _B + r"(?:run_cmd|run_tac|run_elab|run_meta|elab|elab_rules|macro|macro_rules"
            r"|syntax|declare_syntax_cat|notation|infix|infixl|infixr|prefix|postfix"
            r"|initialize|builtin_initialize|unsafe|simproc|dsimproc|simproc_decl"
            r"|declare_simp_like_tactic|register_option|register_simp_attr)" + _E,
            Status.REJECTED_UNSOUND,
            "metaprogram",
        ),
        (  # attributes that register code to run inside Lean
            r"(?:@\[|attribute\s*\[)[^\]]*" + _B + r"(?:command_elab|term_elab|tactic_elab|delab"
            r"|app_unexpander|builtin_command_elab|builtin_term_elab|builtin_tactic|init"
            r"|builtin_init|env_extension|tactic|macro)" + _E,
            Status.REJECTED_UNSOUND,
            "metaprogram",
        ),
        (
            r"(?:Lean\.(?:Elab|Meta|Environment|Kernel|Compiler|Parser|PrettyPrinter|addDecl"
            r"|Declaration|IR)\b)|" + _B + r"(?:addDecl|addAndCompile|modifyEnv|setEnv"
            r"|replaceEnv|unsafeCast|unsafeIO|unsafeBaseIO|ofReduceBool|ofReduceNat"
            r"|trustCompiler|IO|Environment)" + _E + r"|" + _B + r"open\s+Lean" + _E,
            Status.REJECTED_UNSOUND,
            "metaprogram",
        ),
        (r"^[ \t]*(?:(?:public|meta|private)\s+)*import\s", Status.REJECTED_UNSOUND,
         "import_in_proof"),
        (r"^[ \t]*(?:@\[[^\]]*\]\s*)?(?:(?:private|protected|noncomputable)\s+)*axiom\s",
         Status.REJECTED_UNSOUND, "axiom_declaration"),
        (_B + r"(?:exact\?|apply\?)", Status.FAILED, "search_tactic"),
    ]
]
_NATIVE_RULE = (
    re.compile(_B + r"native_decide" + _E + r"|decide\s*\+native|native\s*:=\s*true"),
    Status.REJECTED_UNSOUND,
    "native_decide",
)


@dataclasses.dataclass(frozen=True)
class PrefilterHit:
    status: Status
    reason: str
    match: str
    offset: int


def prefilter(text: str, *, allow_native_decide: bool = False) -> PrefilterHit | None:
    """First banned construct in untrusted Lean text, or None. Pure."""
    sc = scan(text)
    if sc.unterminated_comment:
        return PrefilterHit(Status.REJECTED_UNSOUND, "unclosed_comment", "/-", text.rfind("/-"))
    rules = list(_RULES)
    if not allow_native_decide:
        rules.insert(0, _NATIVE_RULE)
    hits = []
    for pat, st, reason in rules:
        m = pat.search(text)
        if m:
            hits.append((st is not Status.REJECTED_UNSOUND, m.start(), st, reason, m.group()))
    if not hits:
        return None
    _, off, st, reason, grp = min(hits)
    return PrefilterHit(st, reason, grp.strip(), off)


def classify_axioms(
    axioms: Sequence[str], *, allow_native_decide: bool = False
) -> tuple[Status, str] | None:
    """None when every axiom is allowed, else (status, reason)."""
    ax = set(axioms)
    if SORRY_AXIOM in ax:
        return Status.FAILED, "sorry"
    allowed = STANDARD_AXIOMS | (NATIVE_AXIOMS if allow_native_decide else frozenset())
    bad = ax - allowed
    if not bad:
        return None
    if bad <= NATIVE_AXIOMS:
        return Status.REJECTED_UNSOUND, "native_decide"
    return Status.REJECTED_UNSOUND, "axiom_not_allowed"


# --------------------------------------------------------------------------- backend


class _Stop(Exception):
    """Carries a verdict out of the pooled section (the process stays usable)."""

    def __init__(self, status: Status, reason: str, messages: list[Message] | None = None):
        super().__init__(reason)
        self.status, self.reason, self.messages = status, reason, messages or []


def _elan_home() -> Path:
    return Path(os.environ.get("ELAN_HOME") or Path.home() / ".elan")


def default_repl_cmd(project_dir: Path) -> list[str]:
    built = project_dir / ".lake" / "packages" / "REPL" / ".lake" / "build" / "bin" / "repl"
    if built.exists():
        return ["lake", "env", str(built)]
    return ["lake", "exe", "repl"]


class LeanBackend:
    """Verifies Lean 4 proofs through pooled leanprover-community/repl processes.

    ``repl_cmd`` runs in ``project_dir`` under ``sandbox`` (a ``verifier.sandbox.Sandbox``;
    the project and the toolchain ``~/.elan`` are bound read-only, and when the sandbox
    carries the default limits they are raised for Lean, whose Mathlib import maps
    gigabytes: ``address_space_bytes``). ``version`` is what verdicts report as
    ``backend_version``; by default it is read from the project's ``lean-toolchain``.

    ``pool_size`` processes at most (one per header import set at a time), each recycled after
    ``max_uses`` tasks or past ``max_rss_bytes`` (the REPL keeps every environment forever).
    ``import_timeout`` bounds the header import; the ``timeout`` of a call bounds the proof
    command (and the trusted follow-up gets at least 30 s). ``repl_env`` are the variables
    set inside the sandbox (default: PATH with lake, ELAN_HOME). ``fresh_replay`` re-checks
    every proof the REPL accepted with ``lean_cmd`` (default ``lake env lean --json``) in a
    fresh process.
    """

    name = "lean"

    def __init__(
        self,
        project_dir: str | Path | None = None,
        repl_cmd: Sequence[str] | None = None,
        sandbox: Any = None,
        pool_size: int = 1,
        allow_native_decide: bool = False,
        *,
        max_uses: int = 200,
        max_rss_bytes: int | None = 10 << 30,
        import_timeout: float = DEFAULT_IMPORT_TIMEOUT,
        version: str | None = None,
        repl_env: Mapping[str, str] | None = None,
        ro_binds: Sequence[str] = (),
        fresh_replay: bool = False,
        lean_cmd: Sequence[str] | None = None,
        address_space_bytes: int | None = LEAN_ADDRESS_SPACE,
    ) -> None:
        if project_dir is None:
            project_dir = os.environ.get("PROVER_LEAN_PROJECT") or "."
        self.project_dir = Path(project_dir).resolve()
        self.repl_cmd = list(repl_cmd) if repl_cmd else default_repl_cmd(self.project_dir)
        self.allow_native_decide = allow_native_decide
        self.import_timeout = import_timeout
        self.fresh_replay = fresh_replay
        self.lean_cmd = list(lean_cmd) if lean_cmd else ["lake", "env", "lean", "--json"]
        self._version = version
        self.sandbox = self._lean_sandbox(sandbox, ro_binds, address_space_bytes)
        self.repl_env = dict(repl_env) if repl_env is not None else self._default_env()
        self.pool_size = max(1, int(pool_size))
        self._pool = ProcessPool(
            self._spawn, max_size=self.pool_size, max_uses=max_uses, max_rss_bytes=max_rss_bytes
        )

    # ------------------------------------------------------------------ setup

    def _lean_sandbox(
        self, sandbox: Any, extra_binds: Sequence[str], address_space: int | None
    ) -> Any:
        if sandbox is None:
            sandbox = Sandbox()
        binds = [str(self.project_dir)]
        elan = _elan_home()
        if elan.is_dir():
            binds.append(str(elan))
        binds += [str(b) for b in extra_binds]
        new_binds = tuple(sandbox.ro_binds) + tuple(b for b in binds if b not in sandbox.ro_binds)
        limits = sandbox.limits
        if limits == Limits():  # defaults are sized for small processes, not Mathlib
            limits = dataclasses.replace(limits, address_space_bytes=address_space)
        return dataclasses.replace(sandbox, ro_binds=new_binds, limits=limits)

    def _default_env(self) -> dict[str, str]:
        """Variables for the REPL inside the sandbox: lake on PATH, the toolchain home."""
        env = {"LANG": "C.UTF-8"}
        path: list[str] = []
        elan = _elan_home()
        if elan.is_dir():
            env["ELAN_HOME"] = str(elan)
            path.append(str(elan / "bin"))
        exe = shutil.which(self.repl_cmd[0]) if self.repl_cmd else None
        if exe:
            path.append(str(Path(exe).parent))
        for p in path + ["/usr/local/bin", "/usr/bin", "/bin"]:
            if p not in env.get("PATH", "").split(":"):
                env["PATH"] = f"{env['PATH']}:{p}" if "PATH" in env else p
        return env

    def _spawn(self, key: str) -> ReplProcess:
        self.sandbox.check()
        return ReplProcess(
            self.repl_cmd, cwd=self.project_dir, sandbox=self.sandbox, key=key, env=self.repl_env
        )

    def version(self) -> str:
        if self._version is None:
            tc = self.project_dir / "lean-toolchain"
            try:
                self._version = tc.read_text(encoding="utf-8").strip() or "unknown"
            except OSError:
                self._version = "unknown"
        return self._version

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ public API

    def verify_batch(self, tasks: Sequence[ProofTask], *, timeout: float) -> list[Verdict]:
        if len(tasks) <= 1 or self.pool_size == 1:
            return [self.verify(t, timeout=timeout) for t in tasks]
        with ThreadPoolExecutor(max_workers=min(self.pool_size, len(tasks))) as ex:
            return list(ex.map(lambda t: self.verify(t, timeout=timeout), tasks))

    def verify(self, task: ProofTask, *, timeout: float) -> Verdict:
        t0 = time.monotonic()
        try:
            status, reason, messages, axioms = self._verify(task, timeout)
        except Exception as e:  # noqa: BLE001 - a fault of ours is a verdict, never a crash
            status, reason, messages, axioms = (
                Status.INTERNAL_ERROR, f"exception:{type(e).__name__}",
                [Message("error", str(e)[:2000], in_proof=False)], [],
            )
        return Verdict(
            status=status, messages=messages, axioms=axioms,
            seconds=round(time.monotonic() - t0, 3), backend=self.name,
            backend_version=self.version(), sandboxed=bool(self.sandbox.enabled), reason=reason,
        )

    def check_statement(self, header: str, statement: str, *, timeout: float) -> Verdict:
        """PROVED when the statement elaborates with a ``sorry`` proof and nothing else is
        wrong (the sorry warning is expected; any error fails)."""
        t0 = time.monotonic()

        def verdict(status: Status, reason: str | None, msgs: list[Message] = ()) -> Verdict:
            return Verdict(
                status=status, messages=list(msgs), seconds=round(time.monotonic() - t0, 3),
                backend=self.name, backend_version=self.version(),
                sandboxed=bool(self.sandbox.enabled), reason=reason,
            )

        hit = prefilter(statement, allow_native_decide=self.allow_native_decide)
        if hit:
            return verdict(hit.status, hit.reason, [_hit_message(hit, statement)])
        try:
            stmt = parse_statement(statement)
            parts = split_header(header)
        except StatementError as e:
            return verdict(Status.FAILED, "bad_statement", [Message("error", str(e))])
        cmd = stmt.statement_check_command("prover_goal_" + secrets.token_hex(6))

        def body(proc: ReplProcess, stage: list[str]) -> Interpretation:
            base = self._header_env(proc, parts, stage)
            stage[0] = "reference"
            return proc.run_command(cmd, base, timeout)[1]

        res = self._run(pool_key(parts), body)
        if isinstance(res, _Stop):
            return verdict(res.status, res.reason, res.messages)
        it = res
        msgs = [_plain_message(m) for m in it.messages]
        if it.outcome is Outcome.REPL_ERROR:
            return verdict(Status.INTERNAL_ERROR, "repl_error", [Message("error", it.detail)])
        if it.outcome is Outcome.ERROR:
            return verdict(Status.FAILED, "error", msgs)
        if not it.has_sorry:
            # a well-formed statement always draws the sorry warning; no warning means the
            # command did not declare what we think it declared
            return verdict(Status.FAILED, "no_declaration", msgs)
        return verdict(Status.PROVED, None, [m for m in msgs if "sorry" not in m.text])

    # ------------------------------------------------------------------ the ladder

    def _verify(
        self, task: ProofTask, timeout: float
    ) -> tuple[Status, str | None, list[Message], list[str]]:
        try:
            stmt = parse_statement(task.statement)
            parts = split_header(task.header)
        except StatementError as e:
            return Status.FAILED, "bad_statement", [Message("error", str(e), in_proof=False)], []
        nonce = secrets.token_hex(8)
        goal_name = f"prover_goal_{nonce}"
        asm = assemble(stmt, task.proof, goal_name, parts.imports, getattr(task, "helpers", ""))
        # (d) prefilter: the untrusted text, and the statement too (conjectured statements
        # were written by a model)
        for text in (asm.untrusted, task.statement):
            hit = prefilter(text, allow_native_decide=self.allow_native_decide)
            if hit:
                return hit.status, hit.reason, [_hit_message(hit, text)], []
        if not asm.untrusted.strip():
            return Status.FAILED, "empty_proof", [], []
        target = qualified_name(stmt, header_namespace(parts.rest), goal_name)
        header_lines = _header_line_count(task.header)

        def body(proc: ReplProcess, stage: list[str]) -> tuple[list[Message], list[str]]:
            base = self._header_env(proc, parts, stage)
            stage[0] = "reference"
            ref_env, ref_name = self._reference_env(proc, stmt, base, timeout)
            # (a) the proof command
            stage[0] = "proof"
            _, it = proc.run_command(asm.body, ref_env, timeout)
            msgs = [_map_message(m, asm, header_lines) for m in it.messages]
            if it.outcome is Outcome.REPL_ERROR:
                raise _Stop(Status.INTERNAL_ERROR, "repl_error", [Message("error", it.detail)])
            if it.outcome is Outcome.ERROR:
                raise _Stop(Status.FAILED, "error", msgs)
            if it.outcome is Outcome.INCOMPLETE or it.has_sorry:
                raise _Stop(Status.FAILED, "sorry", msgs)
            assert it.env is not None
            # (b) + (c) the follow-up
            stage[0] = "followup"
            return msgs, self._followup(proc, it.env, ref_name, target, timeout)

        res = self._run(pool_key(parts), body)
        if isinstance(res, _Stop):
            return res.status, res.reason, res.messages, []
        msgs, axioms = res
        verdict_msgs = [m for m in msgs if m.severity != "info" or m.in_proof]
        bad = classify_axioms(axioms, allow_native_decide=self.allow_native_decide)
        if bad:
            return bad[0], bad[1], verdict_msgs, axioms
        if self.fresh_replay:
            replay = self._fresh_replay(task, parts, stmt, asm, target, timeout)
            if replay is not None:
                return replay[0], replay[1], verdict_msgs + replay[2], axioms
        return Status.PROVED, None, verdict_msgs, axioms

    def _run(self, key: str, body: Any) -> Any:
        """Run ``body(proc, stage)`` on a pooled process; a _Stop it raises comes back as a
        value (the process stays warm). REPL failures become a _Stop too; one that happens
        while setting up the trusted environments is retried once on a fresh process."""
        for attempt in (0, 1):
            stage = ["import"]
            try:
                with self._pool.acquire(key) as proc:
                    proc.uses += 1
                    try:
                        return body(proc, stage)
                    except _Stop as s:
                        return s
            except (ReplCrashed, ReplProtocolError) as e:
                if stage[0] == "import" and attempt == 0:
                    continue
                return _repl_failure(e, stage[0])
            except ReplError as e:
                return _repl_failure(e, stage[0])
            except SandboxUnavailable as e:
                return _Stop(Status.INTERNAL_ERROR, "sandbox_unavailable", [_infra_message(e)])
        raise AssertionError("unreachable")

    def _header_env(self, proc: ReplProcess, parts: HeaderParts, stage: list[str]) -> int:
        """Env of imports + header rest in this process (created once per process)."""
        st = proc.state
        stage[0] = "import"
        if "import_env" not in st:
            _, it = proc.run_command(pool_key(parts), None, self.import_timeout)
            if it.outcome in (Outcome.ERROR, Outcome.REPL_ERROR) or it.env is None:
                msgs = [_plain_message(m) for m in it.messages] or [Message("error", it.detail)]
                proc.close()  # an environment that failed to import is not worth keeping
                raise _Stop(Status.FAILED, "header_error", msgs)
            st["import_env"] = it.env
            st["rest_env"] = {}
        if not parts.rest:
            return st["import_env"]
        rest_envs: dict[str, int] = st["rest_env"]
        if parts.rest not in rest_envs:
            _, it = proc.run_command(parts.rest, st["import_env"], self.import_timeout)
            if it.outcome in (Outcome.ERROR, Outcome.REPL_ERROR) or it.env is None:
                msgs = [_plain_message(m) for m in it.messages] or [Message("error", it.detail)]
                raise _Stop(Status.FAILED, "header_error", msgs)
            rest_envs[parts.rest] = it.env
        return rest_envs[parts.rest]

    def _reference_env(
        self, proc: ReplProcess, stmt: Statement, base: int, timeout: float
    ) -> tuple[int, str]:
        """Env holding ``prover_ref_<id>``: the trusted statement elaborated alone."""
        refs: dict[tuple[int, str], tuple[int, str]] = proc.state.setdefault("ref_env", {})
        key = (base, stmt.signature_rest)
        if key not in refs:
            ref_name = "prover_ref_" + secrets.token_hex(8)
            _, it = proc.run_command(stmt.reference_command(ref_name), base, max(timeout, 1.0))
            if it.outcome in (Outcome.ERROR, Outcome.REPL_ERROR) or it.env is None:
                msgs = [_plain_message(m) for m in it.messages] or [Message("error", it.detail)]
                raise _Stop(Status.FAILED, "statement_error", msgs)
            refs[key] = (it.env, ref_name)
        return refs[key]

    def _followup(
        self, proc: ReplProcess, env: int, ref_name: str, target: str, timeout: float
    ) -> list[str]:
        chk = "prover_chk_" + secrets.token_hex(8)
        text = followup_command(chk, ref_name, target)
        _, it = proc.run_command(text, env, max(timeout, MIN_FOLLOWUP_TIMEOUT))
        if it.outcome is Outcome.REPL_ERROR:
            raise _Stop(Status.INTERNAL_ERROR, "repl_error", [Message("error", it.detail)])
        return read_followup(it, chk)

    # ------------------------------------------------------------------ fresh replay

    def _fresh_replay(
        self, task: ProofTask, parts: HeaderParts, stmt: Statement, asm: Assembly, target: str,
        timeout: float,
    ) -> tuple[Status, str, list[Message]] | None:
        """Re-check the assembled file with a fresh ``lean`` (no REPL state). None = passed."""
        ref_name = "prover_ref_" + secrets.token_hex(8)
        chk = "prover_chk_" + secrets.token_hex(8)
        text, followup_line = replay_file(task.header, stmt, asm, ref_name, chk, target)
        scratch = Path(tempfile.mkdtemp(prefix="lean-replay-"))
        try:
            path = scratch / "Replay.lean"
            path.write_text(text, encoding="utf-8")
            proc = self.sandbox.popen(
                wrap_command(self.lean_cmd + [str(path)], self.project_dir, self.repl_env),
                scratch, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            try:
                out, _err = proc.communicate(timeout=self.import_timeout + timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                proc.communicate()
                return Status.TIMEOUT, "replay_timeout", []
            return judge_replay(
                out.decode("utf-8", "replace"), chk, followup_line, self.allow_native_decide
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------- helpers


def followup_command(chk: str, ref_name: str, target: str) -> str:
    """The trusted check run on the proof's environment (see the module docstring)."""
    return (
        "set_option debug.skipKernelTC false in\n"
        f"theorem _root_.{chk} : type_of% @_root_.{ref_name} := @{target}\n"
        f"#print axioms _root_.{chk}"
    )


FOLLOWUP_AXIOMS_LINE = 3


def read_followup(it: Interpretation, chk: str, line: int = FOLLOWUP_AXIOMS_LINE) -> list[str]:
    """Axioms of the check theorem, or raise _Stop for a mismatch / unreadable reply."""
    if it.kind != "command":
        raise _Stop(Status.INTERNAL_ERROR, "followup_unreadable")
    errors = [m for m in it.messages if m.is_error]
    if errors:
        raise _Stop(
            Status.REJECTED_UNSOUND, "statement_mismatch",
            [_plain_message(m) for m in errors],
        )
    reports = []
    for m in it.messages:
        if m.severity != "info" or m.line != line:
            continue
        rep = protocol.parse_axioms_message(m.text)
        if rep and rep.name.replace("«", "").replace("»", "").removeprefix("_root_.") == chk:
            reports.append(rep)
    if len(reports) != 1:
        raise _Stop(Status.INTERNAL_ERROR, "followup_unreadable")
    return list(reports[0].axioms)


def replay_file(
    header: str, stmt: Statement, asm: Assembly, ref_name: str, chk: str, target: str
) -> tuple[str, int]:
    """Standalone file for a fresh ``lean``: header, reference, checked text, follow-up."""
    head = header.rstrip() + "\n\n" + stmt.reference_command(ref_name) + "\n\n"
    body = asm.body.rstrip() + "\n\n"
    text = head + body + followup_command(chk, ref_name, target) + "\n"
    followup_line = (head + body).count("\n") + FOLLOWUP_AXIOMS_LINE
    return text, followup_line


def judge_replay(
    stdout: str, chk: str, followup_line: int, allow_native_decide: bool
) -> tuple[Status, str, list[Message]] | None:
    """Verdict from ``lean --json`` output (one JSON message per line)."""
    msgs: list[dict[str, Any]] = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                msgs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    parsed = protocol.parse_messages(
        [{k: m.get(k) for k in ("severity", "data", "pos", "endPos")} for m in msgs]
    )
    if any(m.is_error for m in parsed):
        return Status.FAILED, "replay_error", [_plain_message(m) for m in parsed if m.is_error]
    fake = Interpretation("command", Outcome.COMPLETE, env=0, messages=parsed)
    try:
        axioms = read_followup(fake, chk, followup_line)
    except _Stop as s:
        return s.status, "replay_" + s.reason, s.messages
    bad = classify_axioms(axioms, allow_native_decide=allow_native_decide)
    if bad:
        return bad[0], bad[1], []
    return None


def _header_line_count(header: str) -> int:
    return header.rstrip().count("\n") + 2  # header, blank line, then the body


def _map_message(m: ReplMessage, asm: Assembly, header_lines: int) -> Message:
    line, col, in_proof = asm.map_position(m.line, m.column)
    end_line, end_col, end_in = asm.map_position(m.end_line, m.end_column, end=True)
    if not in_proof:
        line = line + header_lines if line is not None else None
    if in_proof != end_in:
        end_line = end_col = None
    elif not end_in and end_line is not None:
        end_line += header_lines
    return Message(m.severity, m.text, line, col, end_line, end_col, in_proof)


def _plain_message(m: ReplMessage) -> Message:
    return Message(m.severity, m.text, m.line, m.column, m.end_line, m.end_column, False)


def _hit_message(hit: PrefilterHit, text: str) -> Message:
    line = text.count("\n", 0, hit.offset) + 1
    col = hit.offset - (text.rfind("\n", 0, hit.offset) + 1)
    return Message("error", f"not allowed: {hit.match!r} ({hit.reason})", line, col, in_proof=True)


def _repl_failure(e: ReplError, stage: str) -> _Stop:
    """The verdict for a REPL process failure at a stage of the ladder."""
    msgs = _stderr_message(e)
    if isinstance(e, ReplTimeout):
        if stage == "import":
            return _Stop(Status.INTERNAL_ERROR, "import_timeout", msgs)
        return _Stop(Status.TIMEOUT, "timeout" if stage == "proof" else f"{stage}_timeout", msgs)
    if isinstance(e, ReplCrashed):
        if stage in ("proof", "followup"):
            # what the proof made Lean do killed it: memory or stack exhaustion, mostly
            return _Stop(Status.RESOURCE_LIMIT, "repl_crashed", msgs)
        return _Stop(Status.INTERNAL_ERROR, "repl_crashed", msgs)
    return _Stop(Status.INTERNAL_ERROR, "protocol_error", msgs)


def _infra_message(e: BaseException) -> Message:
    return Message("error", str(e)[:2000], in_proof=False)


def _stderr_message(e: ReplError) -> list[Message]:
    text = str(e)
    if e.stderr.strip():
        text += "\n" + e.stderr.strip()[-1500:]
    return [Message("error", text, in_proof=False)]
