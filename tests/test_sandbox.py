"""The sandbox itself: escapes attempted by a real shell/python inside it must fail."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from verifier.sandbox import Sandbox, SandboxUnavailable, kill_group


@pytest.fixture
def scratch():
    d = Path(tempfile.mkdtemp(prefix="sbx-test-"))
    os.chmod(d, 0o755)
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def planted_secret():
    home = Path(os.path.expanduser("~"))
    p = home / f".vrf_secret_{uuid.uuid4().hex}"
    p.write_text("TOPSECRET\n")
    yield p
    p.unlink(missing_ok=True)


@pytest.fixture
def outside_dir():
    d = Path(tempfile.mkdtemp(prefix="sbx-outside-"))
    os.chmod(d, 0o777)
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def run(sb: Sandbox, script: str, scratch: Path) -> tuple[int, str]:
    p = sb.popen(["/bin/sh", "-c", script], scratch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = p.communicate(timeout=60)
    finally:
        kill_group(p)
    return p.returncode, out.decode(errors="replace")


def test_escapes_fail(scratch, planted_secret, outside_dir):
    sb = Sandbox()
    sb.check()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    target = outside_dir / "pwned"
    script = f"""
echo inside > {scratch}/ok && echo WRITE_SCRATCH_OK
echo x > {target} && echo WRITE_OUTSIDE_OK
echo x > /usr/pwned && echo WRITE_USR_OK
cat {planted_secret} && echo READ_SECRET_OK
ls /work >/dev/null 2>&1 && echo SEE_WORK_OK
python3 -c "import socket; socket.create_connection(('127.0.0.1', 5432), timeout=3)" 2>/dev/null && echo CONNECT_5432_OK
python3 -c "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)" 2>/dev/null && echo CONNECT_HOST_OK
id -u
"""
    try:
        rc, out = run(sb, script, scratch)
    finally:
        listener.close()
    assert "WRITE_SCRATCH_OK" in out and (scratch / "ok").read_text() == "inside\n"
    for bad in ("WRITE_OUTSIDE_OK", "WRITE_USR_OK", "READ_SECRET_OK", "TOPSECRET", "SEE_WORK_OK",
                "CONNECT_5432_OK", "CONNECT_HOST_OK"):
        assert bad not in out, out
    assert not target.exists()
    assert not Path("/usr/pwned").exists()
    assert out.strip().splitlines()[-1] != "0"  # not root inside


def test_env_cleared_and_limits(scratch, monkeypatch):
    monkeypatch.setenv("VRF_SECRET_TOKEN", "hunter2")
    rc, out = run(Sandbox(), "env; ulimit -v; ulimit -f", scratch)
    assert "hunter2" not in out
    assert f"HOME={scratch}" in out
    lines = out.strip().splitlines()
    assert lines[-2] == str((4 << 30) // 1024)  # RLIMIT_AS in KiB
    assert lines[-1] == str((64 << 20) // 512)  # RLIMIT_FSIZE in 512-byte blocks


def test_unavailable_and_unsafe(scratch):
    bogus = Sandbox(bwrap="/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable):
        bogus.check()
    unsafe = Sandbox(enabled=False, bwrap="/nonexistent/bwrap")
    unsafe.check()  # explicitly disabled: no probe, no error
    assert unsafe.argv(["true"], scratch) == ["true"]
    rc, out = run(unsafe, "echo $HOME", scratch)
    assert rc == 0 and out.strip() == str(scratch)


def test_kill_group_kills_children(scratch):
    p = Sandbox().popen(["/bin/sh", "-c", "sleep 300 & sleep 300; wait"], scratch,
                        stdout=subprocess.PIPE)
    kill_group(p)
    assert p.poll() is not None
