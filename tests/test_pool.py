"""ProcessPool with real (tiny) subprocesses: `cat` stands in for a proof assistant."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from verifier.pool import ProcessPool, tree_rss_bytes
from verifier.sandbox import Sandbox, kill_group


class Cat:
    def __init__(self, key: str, tmp: Path) -> None:
        self.key = key
        self.uses = 0
        self.closed = False
        self.proc = Sandbox(enabled=False).popen(
            ["cat"], tmp, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def echo(self, s: str) -> str:
        self.uses += 1
        self.proc.stdin.write(s.encode() + b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode().strip()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.proc.pid)

    def close(self) -> None:
        self.closed = True
        kill_group(self.proc)


@pytest.fixture
def made(tmp_path):
    made: list[Cat] = []

    def factory(key: str) -> Cat:
        c = Cat(key, tmp_path)
        made.append(c)
        return c

    yield made, factory
    for c in made:
        c.close()


def test_reuse_by_key(made):
    made, factory = made
    pool = ProcessPool(factory, max_size=2)
    with pool.acquire("a") as p1:
        assert p1.echo("x") == "x"
    with pool.acquire("a") as p2:
        assert p2 is p1
    with pool.acquire("b") as p3:
        assert p3 is not p1 and p3.key == "b"
    assert len(made) == 2
    pool.close()
    assert all(c.closed for c in made)


def test_recycle_after_max_uses(made):
    made, factory = made
    pool = ProcessPool(factory, max_size=1, max_uses=2)
    with pool.acquire("a") as p:
        p.echo("1")
    with pool.acquire("a") as q:
        assert q is p
        q.echo("2")  # reaches max_uses: closed on release
    assert p.closed
    with pool.acquire("a") as r:
        assert r is not p and r.echo("3") == "3"
    pool.close()


def test_discard_and_exception_close(made):
    made, factory = made
    pool = ProcessPool(factory, max_size=1)
    with pool.acquire("a") as p:
        pool.discard(p)
    assert p.closed
    with pool.acquire("a") as q:
        assert q is not p
    with pytest.raises(RuntimeError), pool.acquire("a") as r:
        assert r is q
        raise RuntimeError("boom")
    assert q.closed
    with pool.acquire("a") as s:
        assert s is not q and s.echo("ok") == "ok"
    pool.close()


def test_dead_idle_process_is_replaced(made):
    made, factory = made
    pool = ProcessPool(factory, max_size=1)
    with pool.acquire("a") as p:
        pass
    os.kill(p.proc.pid, signal.SIGKILL)
    p.proc.wait()
    with pool.acquire("a") as q:
        assert q is not p and q.echo("y") == "y"
    pool.close()


def test_lru_eviction(made):
    made, factory = made
    pool = ProcessPool(factory, max_size=2)
    with pool.acquire("a") as a:
        pass
    with pool.acquire("b") as b:
        pass
    with pool.acquire("a") as a2:  # "a" is now the most recently used
        assert a2 is a
    with pool.acquire("c") as c:  # evicts "b", the least recently used idle process
        assert c.key == "c"
    assert b.closed and not a.closed
    pool.close()


def test_rss_limit_recycles(made):
    made, factory = made
    pool = ProcessPool(factory, max_size=1, max_rss_bytes=1)  # every process is "too big"
    with pool.acquire("a") as p:
        assert p.rss_bytes() > 1
    assert p.closed
    pool.close()


def test_blocks_when_all_busy_and_is_thread_safe(made):
    made, factory = made
    pool = ProcessPool(factory, max_size=2)
    results, errors = [], []

    def work(i: int) -> None:
        try:
            with pool.acquire("k") as p:
                results.append(p.echo(str(i)) == str(i))
                time.sleep(0.02)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 12 and all(results)
    assert len(made) <= 2
    pool.close()
