from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """../shared/data beside the project (never copied into the repo); PROVER_DATA_DIR overrides."""
    return Path(os.environ.get("PROVER_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.fail(f"benchmark data not found at {path}; set PROVER_DATA_DIR")
    return path


# --- databases: SQLite files and a scratch PostgreSQL database per test session ----------

PG_SERVER = os.environ.get("PROVER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_database_url():
    """A scratch database on the PostgreSQL server, dropped at the end of the session.

    Fails loudly in CI (CI=true) when the server is unreachable; skips with a reason elsewhere.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    try:
        conn = admin.connect()
    except OperationalError as exc:
        msg = f"PostgreSQL not reachable at {PG_SERVER}: {exc.orig}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    name = f"prover_test_{os.getpid()}"
    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_SERVER.rsplit("/", 1)[0] + "/" + name
    from db.session import dispose_engines

    dispose_engines()
    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    conn.close()
    admin.dispose()


def _reset_pg(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """An empty database on each engine (schema not yet created)."""
    from db.session import dispose_engines

    dispose_engines()
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/prover.db"
    else:
        url = request.getfixturevalue("pg_database_url")
        _reset_pg(url)
        yield url
    dispose_engines()


@pytest.fixture()
def pg_url(pg_database_url):
    """The scratch PostgreSQL database, emptied for this test."""
    from db.session import dispose_engines

    dispose_engines()  # cached engines remember an upgraded schema that is now gone
    _reset_pg(pg_database_url)
    yield pg_database_url
    dispose_engines()
