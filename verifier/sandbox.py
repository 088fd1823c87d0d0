"""Run proof-assistant processes inside a bubblewrap sandbox with resource limits.

What a sandboxed process sees:

* no network, IPC, UTS or PID sharing with the host (``--unshare-all``);
* a root that holds only ``/usr`` (read-only), the ``/bin``-style links, a few read-only files
  of ``/etc`` the dynamic loader needs, a fresh ``/proc``, a minimal ``/dev``, an empty private
  ``/tmp``, an empty tmpfs over the user's home, the extra read-only paths of ``ro_binds`` and
  the scratch directory, which is the only writable place;
* a cleared environment (``PATH``, ``HOME`` = scratch, ``LANG``);
* rlimits on address space, CPU time, file size and process count.

When the verifier runs as root, bubblewrap itself is started as the unprivileged user
``nobody`` (65534) so that nothing in the sandbox has root's file access; if a path that must
be bound is not reachable by that user, it falls back to bubblewrap's own user namespace with
``--uid/--gid 65534`` and all capabilities dropped.
"""

from __future__ import annotations

import os
import queue
import resource
import shutil
import signal
import stat
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

NOBODY = 65534
_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
_ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/ocamlfind.conf",
    "/etc/ocamlfind.conf.d",
    "/etc/findlib.conf",
)
_probe_lock = threading.Lock()
_probe_cache: dict[tuple, str | None] = {}  # config -> None if usable else the error text


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot run here; the verifier refuses unless the sandbox was disabled."""


@dataclass(frozen=True)
class Limits:
    address_space_bytes: int | None = 4 << 30
    cpu_seconds: int | None = None  # per process; the wall-clock timeout is separate
    file_size_bytes: int | None = 64 << 20
    max_processes: int | None = 64


def _accessible_to_others(path: str, *, need_read: bool) -> bool:
    """Can an unprivileged stranger traverse to ``path`` (and read it when ``need_read``)?"""
    p = Path(path).resolve()
    for parent in reversed(p.parents):
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    if not need_read:
        return True
    try:
        mode = os.stat(p).st_mode
    except OSError:
        return False
    if stat.S_ISDIR(mode):
        return bool(mode & stat.S_IROTH and mode & stat.S_IXOTH)
    return bool(mode & stat.S_IROTH)


@dataclass(frozen=True)
class Sandbox:
    enabled: bool = True  # False only when the user passes --unsafe-no-sandbox
    ro_binds: tuple[str, ...] = ()  # extra read-only paths (toolchains, Mathlib project)
    limits: Limits = field(default_factory=Limits)
    bwrap: str = "bwrap"  # path of the bubblewrap binary
    drop_privileges: bool = True  # when root, start bwrap as nobody if the binds allow it

    # ------------------------------------------------------------------ probing
    def check(self) -> None:
        """Raise SandboxUnavailable if bubblewrap cannot run here (probed once, cached)."""
        if not self.enabled:
            return
        key = (self.bwrap, self.ro_binds, self.drop_privileges)
        with _probe_lock:
            if key not in _probe_cache:
                _probe_cache[key] = self._probe()
            err = _probe_cache[key]
        if err is not None:
            raise SandboxUnavailable(
                f"bubblewrap sandbox unavailable ({err}); install bubblewrap / allow user "
                "namespaces, or pass --unsafe-no-sandbox to run proofs without isolation"
            )

    def _probe(self) -> str | None:
        exe = shutil.which(self.bwrap) if os.sep not in self.bwrap else self.bwrap
        if not exe or not os.access(exe, os.X_OK):
            return f"{self.bwrap!r} not found"
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="sbx-probe-"))
        try:
            proc = self.popen(
                ["/bin/sh", "-c", "echo ok"],
                scratch,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                out, err = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                return "probe timed out"
            if proc.returncode != 0 or b"ok" not in out:
                return (err or out).decode(errors="replace").strip()[:300] or "probe failed"
            return None
        except OSError as e:
            return str(e)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # ------------------------------------------------------------------ command line
    def _drop_to_nobody(self, scratch: Path) -> bool:
        if not (self.enabled and self.drop_privileges and os.geteuid() == 0):
            return False
        if not _accessible_to_others(str(scratch), need_read=False):
            return False
        return all(_accessible_to_others(p, need_read=True) for p in self.ro_binds)

    def env(self, scratch: Path) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(scratch), "LANG": "C.UTF-8"}

    def argv(self, cmd: list[str], scratch: Path, *, _as_nobody: bool | None = None) -> list[str]:
        """The bubblewrap command line running ``cmd`` (``cmd`` itself when disabled)."""
        if not self.enabled:
            return list(cmd)
        scratch = Path(scratch).resolve()
        as_nobody = self._drop_to_nobody(scratch) if _as_nobody is None else _as_nobody
        a = [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
        if not as_nobody and os.geteuid() == 0:
            a += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL"]
        for k, v in self.env(scratch).items():
            a += ["--setenv", k, v]
        a += ["--ro-bind", "/usr", "/usr"]
        for p in _SYSTEM_LINKS:
            if os.path.islink(p):
                a += ["--symlink", os.readlink(p), p]
            elif os.path.isdir(p):
                a += ["--ro-bind", p, p]
        for p in _ETC_FILES:
            a += ["--ro-bind-try", p, p]
        a += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        homes = {"/root", os.path.expanduser("~")}
        for h in sorted(homes):
            if h and h != "/":
                a += ["--tmpfs", h]
        for p in self.ro_binds:
            ap = os.path.abspath(p)
            a += ["--ro-bind", ap, ap]
        a += ["--bind", str(scratch), str(scratch), "--chdir", str(scratch)]
        return a + ["--"] + list(cmd)

    # ------------------------------------------------------------------ spawning
    def _preexec(self, as_nobody: bool):
        lim = self.limits

        def fn() -> None:
            os.setsid()
            for res, val in (
                (resource.RLIMIT_AS, lim.address_space_bytes),
                (resource.RLIMIT_CPU, lim.cpu_seconds),
                (resource.RLIMIT_FSIZE, lim.file_size_bytes),
                (resource.RLIMIT_NPROC, lim.max_processes),
                (resource.RLIMIT_CORE, 0),
            ):
                if val is not None:
                    resource.setrlimit(res, (val, val))
            if as_nobody:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)

        return fn

    def popen(self, cmd: list[str], scratch: Path, **popen_kw) -> subprocess.Popen:
        """Start ``cmd`` in the sandbox: own process group, rlimits, cleared environment."""
        scratch = Path(scratch).resolve()
        scratch.mkdir(parents=True, exist_ok=True)
        as_nobody = self._drop_to_nobody(scratch)
        if as_nobody:
            os.chown(scratch, NOBODY, NOBODY)
        argv = self.argv(cmd, scratch, _as_nobody=as_nobody)
        popen_kw.pop("start_new_session", None)
        popen_kw.pop("preexec_fn", None)
        popen_kw.setdefault("cwd", str(scratch))
        popen_kw["env"] = {} if self.enabled else self.env(scratch)
        popen_kw.setdefault("close_fds", True)
        preexec = self._preexec(as_nobody)
        return _spawn(lambda: subprocess.Popen(argv, preexec_fn=preexec, **popen_kw))


# bwrap --die-with-parent uses PR_SET_PDEATHSIG, which fires when the *thread* that forked the
# child exits. Worker threads come and go (thread pools), so every sandboxed process is forked
# from one long-lived spawner thread instead.
_spawn_q: queue.Queue[tuple[Callable[[], subprocess.Popen], Future]] = queue.Queue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _spawner_main() -> None:
    while True:
        fn, fut = _spawn_q.get()
        if not fut.set_running_or_notify_cancel():
            continue
        try:
            fut.set_result(fn())
        except BaseException as e:  # delivered to the caller
            fut.set_exception(e)


def _spawn(fn: Callable[[], subprocess.Popen]) -> subprocess.Popen:
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_spawner_main, name="sandbox-spawner", daemon=True)
            _spawner.start()
    fut: Future = Future()
    _spawn_q.put((fn, fut))
    return fut.result()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the whole process group of ``proc`` (its session leader) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except (ProcessLookupError, OSError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a kernel-level hang
        pass
    for f in (proc.stdin, proc.stdout, proc.stderr):
        try:
            if f is not None:
                f.close()
        except OSError:
            pass
