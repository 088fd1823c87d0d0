"""Engines and sessions. SQLite (a file, WAL mode) by default; PostgreSQL by URL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_DB_PATH = Path(os.environ.get("PROVER_HOME", Path.home() / ".local/share/selfplay-prover")) / "prover.db"


def resolve_url(url: str | None = None) -> str:
    """--db URL, else $PROVER_DB_URL, else the embedded SQLite file."""
    if url:
        return url
    env = os.environ.get("PROVER_DB_URL")
    if env:
        return env
    DEFAULT_DB_PATH.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_DB_PATH}"


def _normalize(url: str) -> str:
    # Plain postgresql:// would pick psycopg2, which is not a dependency; psycopg 3 is.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str | None = None, **kw) -> Engine:
    url = _normalize(resolve_url(url))
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60}, **kw)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **kw)


_engines: dict[str, Engine] = {}


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL per process, with the schema upgraded to head on first use."""
    key = _normalize(resolve_url(url))
    if key not in _engines:
        engine = make_engine(key)
        from db.migrate import upgrade

        upgrade(engine)
        _engines[key] = engine
    return _engines[key]


def dispose_engines() -> None:
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


@contextmanager
def session_scope(url_or_engine: str | Engine | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error (nothing half-written)."""
    engine = url_or_engine if isinstance(url_or_engine, Engine) else get_engine(url_or_engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
