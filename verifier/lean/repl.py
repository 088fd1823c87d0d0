"""One warm Lean REPL process (``lake env <repl>``) speaking the JSON protocol.

The REPL has no timeout of its own and keeps every environment forever, so this wrapper:

* enforces a per-request deadline with ``selectors`` on the pipes (stdout and stderr are
  both drained, stdin is written without blocking); on timeout the whole process group is
  killed and :class:`ReplTimeout` raised, and the pool drops the process;
* raises :class:`ReplCrashed` on end of output / exit, :class:`ReplProtocolError` on output
  that is not a reply (garbage, or a reply whose ``env`` is not the one the REPL must
  allocate next: the REPL numbers environments 0, 1, 2, ... one per command, so a reply out
  of that sequence means the stream is out of step and nothing read from it can be trusted);
* reports the resident memory of its process tree for recycling.

Only requests built by :func:`verifier.lean.protocol.command` are ever sent.
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from verifier.lean import protocol
from verifier.lean.protocol import Interpretation, ProtocolError, ReplyReader
from verifier.pool import tree_rss_bytes
from verifier.sandbox import kill_group

_STDERR_TAIL = 16 << 10


class ReplError(RuntimeError):
    """The REPL process failed (not the proof)."""

    def __init__(self, msg: str, stderr: str = "") -> None:
        super().__init__(msg)
        self.stderr = stderr


class ReplTimeout(ReplError):
    pass


class ReplCrashed(ReplError):
    def __init__(self, msg: str, stderr: str = "", returncode: int | None = None) -> None:
        super().__init__(msg, stderr)
        self.returncode = returncode


class ReplProtocolError(ReplError):
    pass


class ReplProcess:
    """A REPL child under the sandbox. Not thread-safe: one user at a time (the pool)."""

    def __init__(
        self,
        cmd: list[str],
        *,
        cwd: str | Path,
        sandbox: Any,
        key: str = "",
        env: Mapping[str, str] | None = None,
        scratch_root: str | Path | None = None,
    ) -> None:
        self.key = key
        self.uses = 0
        self.next_env = 0
        # per-process caches owned by the backend (header env, reference envs, ...)
        self.state: dict[str, Any] = {}
        self.scratch = Path(tempfile.mkdtemp(prefix="lean-repl-", dir=scratch_root))
        self._reader = ReplyReader()
        self._stderr = bytearray()
        self._closed = False
        # The sandbox clears the environment and starts in its scratch directory, so the
        # working directory and variables (PATH to lake, ELAN_HOME, ...) are set by
        # coreutils' env inside it.
        argv = wrap_command(cmd, cwd, env)
        try:
            self._proc = sandbox.popen(
                argv, self.scratch,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        except BaseException:
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        for f in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            os.set_blocking(f.fileno(), False)

    # ------------------------------------------------------------------ pool protocol

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return not self._closed and self._proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the process and all its descendants (Linux /proc)."""
        return tree_rss_bytes(self._proc.pid)  # bwrap + lake + repl

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        kill_group(self._proc)
        for f in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ------------------------------------------------------------------ requests

    @property
    def stderr_tail(self) -> str:
        return self._stderr.decode("utf-8", errors="replace")

    def request(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and return its reply. Any failure kills the process."""
        if self._closed:
            raise ReplCrashed("process already closed")
        data = protocol.encode_request(req)
        try:
            return self._exchange(data, timeout)
        except ReplError:
            self.close()
            raise
        except ProtocolError as e:
            self.close()
            raise ReplProtocolError(str(e), self.stderr_tail) from None

    def run_command(
        self, cmd: str, env: int | None, timeout: float
    ) -> tuple[dict[str, Any], Interpretation]:
        """Run ``{"cmd": cmd, "env": env}``; check the reply is the next environment."""
        reply = self.request(protocol.command(cmd, env), timeout)
        try:
            interp = protocol.interpret(reply)
        except ProtocolError as e:
            self.close()
            raise ReplProtocolError(str(e), self.stderr_tail) from None
        if interp.kind == "command":
            if interp.env != self.next_env:
                self.close()
                raise ReplProtocolError(
                    f"reply env {interp.env} out of sequence (expected {self.next_env})"
                )
            self.next_env += 1
        elif interp.kind != "refusal":
            self.close()
            raise ReplProtocolError(f"a command got a {interp.kind} reply")
        return reply, interp

    def _exchange(self, data: bytes, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        proc = self._proc
        pending = memoryview(data)
        sel = selectors.DefaultSelector()
        try:
            sel.register(proc.stdout, selectors.EVENT_READ, "out")
            sel.register(proc.stderr, selectors.EVENT_READ, "err")
            if pending:
                sel.register(proc.stdin, selectors.EVENT_WRITE, "in")
            # a reply can only follow our request; anything already buffered is stray output
            if self._reader.pending:
                raise ProtocolError("output before the request was sent")
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close()
                    raise ReplTimeout(f"no reply within {timeout:g} s", self.stderr_tail)
                events = sel.select(min(left, 1.0))
                if not events and proc.poll() is not None and not pending:
                    # drained and exited
                    self._drain_after_exit()
                    reply = self._reader.pop()
                    if reply is not None:
                        return reply
                    raise self._crashed()
                for key, _ in events:
                    if key.data == "in":
                        try:
                            n = os.write(proc.stdin.fileno(), pending[: 1 << 16])
                        except BlockingIOError:
                            continue
                        except OSError:  # broken pipe: the exit shows up on stdout
                            sel.unregister(proc.stdin)
                            pending = memoryview(b"")
                            continue
                        pending = pending[n:]
                        if not pending:
                            sel.unregister(proc.stdin)
                    elif key.data == "err":
                        chunk = self._read(proc.stderr)
                        if chunk is None:
                            continue
                        if not chunk:
                            sel.unregister(proc.stderr)
                            continue
                        self._stderr += chunk
                        del self._stderr[:-_STDERR_TAIL]
                    else:
                        chunk = self._read(proc.stdout)
                        if chunk is None:
                            continue
                        if not chunk:
                            sel.unregister(proc.stdout)
                            reply = self._reader.pop()
                            if reply is not None and not pending:
                                return self._single(reply)
                            try:
                                proc.wait(timeout=2)
                            except subprocess.TimeoutExpired:
                                pass
                            self._drain_stderr()
                            raise self._crashed()
                        self._reader.feed(chunk)
                        reply = self._reader.pop()
                        if reply is not None:
                            if pending:
                                raise ProtocolError("reply before the request was complete")
                            return self._single(reply)
        finally:
            sel.close()

    def _single(self, reply: dict[str, Any]) -> dict[str, Any]:
        # The REPL writes one reply per request and then waits for input, so a second reply
        # already in the buffer means something else wrote to stdout.
        if self._reader.pending:
            raise ProtocolError("more than one reply to a request")
        return reply

    @staticmethod
    def _read(f: Any) -> bytes | None:
        try:
            return os.read(f.fileno(), 1 << 16)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _drain_stderr(self) -> None:
        while True:
            chunk = self._read(self._proc.stderr)
            if not chunk:
                break
            self._stderr += chunk
        del self._stderr[:-_STDERR_TAIL]

    def _drain_after_exit(self) -> None:
        while True:
            chunk = self._read(self._proc.stdout)
            if not chunk:
                break
            self._reader.feed(chunk)
        self._drain_stderr()

    def _crashed(self) -> ReplCrashed:
        rc = self._proc.poll()
        err = self.stderr_tail
        self.close()
        return ReplCrashed(f"REPL exited (code {rc})", err, rc)


def wrap_command(cmd: list[str], cwd: str | Path, env: Mapping[str, str] | None) -> list[str]:
    """``env -C cwd K=V ... cmd``: working directory and environment set inside a sandbox."""
    out = ["/usr/bin/env", "-C", str(cwd)]
    for k, v in (env or {}).items():
        if "=" in k or not k:
            raise ValueError(f"bad environment variable name {k!r}")
        out.append(f"{k}={v}")
    if cmd and "=" in cmd[0]:
        raise ValueError("command must not look like an assignment")
    return out + list(cmd)
