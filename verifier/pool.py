"""A thread-safe pool of warm proof-assistant processes keyed by a string (the header).

A warm process has paid its start-up (library loading) once; the pool hands it out again for
the same key, recycles it after ``max_uses`` or when its resident memory grows past
``max_rss_bytes``, and closes it when the caller reports it broken (``discard``) or when the
body of ``acquire`` raises. Creating a process never happens under the pool lock.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class WarmProcess(Protocol):
    uses: int

    def alive(self) -> bool: ...

    def rss_bytes(self) -> int: ...

    def close(self) -> None: ...  # kills the process group


P = TypeVar("P", bound=WarmProcess)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces: split after the last ')'
        rest = data[data.rfind(b")") + 2 :].split()
        if len(rest) > 1:
            children.setdefault(int(rest[1]), []).append(int(name))
    return children


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, read from /proc (0 if gone)."""
    children = _children_map()
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            pass
        stack.extend(children.get(p, ()))
    return total


class ProcessPool(Generic[P]):
    def __init__(
        self,
        factory: Callable[[str], P],
        *,
        max_size: int,
        max_uses: int = 200,
        max_rss_bytes: int | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self._factory = factory
        self.max_size = max_size
        self.max_uses = max_uses
        self.max_rss_bytes = max_rss_bytes
        self._cond = threading.Condition()
        self._idle: OrderedDict[int, tuple[str, P]] = OrderedDict()  # LRU first
        self._busy: dict[int, tuple[str, P]] = {}
        self._reserved = 0  # slots taken by processes being created
        self._closed = False
        self.created = 0  # statistics, handy in tests and benchmarks
        self.recycled = 0

    # ------------------------------------------------------------------ public
    @contextmanager
    def acquire(self, key: str) -> Iterator[P]:
        proc = self._take(key)
        ok = False
        try:
            yield proc
            ok = True
        finally:
            self._give_back(key, proc, ok)

    def discard(self, proc: P) -> None:
        """Mark ``proc`` broken: it is closed now and never handed out again."""
        with self._cond:
            entry = self._busy.get(id(proc))
            if entry is not None:
                self._busy[id(proc)] = (entry[0], proc)
            self._idle.pop(id(proc), None)
            proc._pool_discarded = True
        _safe_close(proc)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            victims = [p for _, p in self._idle.values()] + [p for _, p in self._busy.values()]
            self._idle.clear()
            self._cond.notify_all()
        for p in victims:
            _safe_close(p)

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "idle": len(self._idle),
                "busy": len(self._busy),
                "created": self.created,
                "recycled": self.recycled,
            }

    # ------------------------------------------------------------------ internals
    def _size(self) -> int:
        return len(self._idle) + len(self._busy) + self._reserved

    def _take(self, key: str) -> P:
        victim: P | None = None
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("pool is closed")
                for pid, (k, p) in reversed(self._idle.items()):  # most recently used first
                    if k == key:
                        del self._idle[pid]
                        if not _is_alive(p):  # died while idle: replace it
                            self.recycled += 1
                            victim = p
                            break
                        self._busy[pid] = (k, p)
                        return p
                if victim is not None:
                    break
                if self._size() < self.max_size:
                    break
                if self._idle:  # evict the least recently used idle process of another key
                    _, (_, victim) = self._idle.popitem(last=False)
                    break
                self._cond.wait()
            self._reserved += 1
        if victim is not None:
            _safe_close(victim)
        try:
            proc = self._factory(key)
        except BaseException:
            with self._cond:
                self._reserved -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._reserved -= 1
            self.created += 1
            self._busy[id(proc)] = (key, proc)
        return proc

    def _healthy(self, proc: P) -> bool:
        if getattr(proc, "_pool_discarded", False):
            return False
        if proc.uses >= self.max_uses:
            return False
        try:
            if not proc.alive():
                return False
            if self.max_rss_bytes is not None and proc.rss_bytes() > self.max_rss_bytes:
                return False
        except Exception:
            return False
        return True

    def _give_back(self, key: str, proc: P, ok: bool) -> None:
        keep = ok and self._healthy(proc)
        with self._cond:
            self._busy.pop(id(proc), None)
            if keep and not self._closed:
                self._idle[id(proc)] = (key, proc)
            self._cond.notify_all()
        if not keep:
            if not getattr(proc, "_pool_discarded", False):
                self.recycled += 1
            _safe_close(proc)


def _is_alive(proc: WarmProcess) -> bool:
    try:
        return bool(proc.alive())
    except Exception:
        return False


def _safe_close(proc: WarmProcess) -> None:
    try:
        proc.close()
    except Exception:
        pass
