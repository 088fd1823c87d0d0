"""The `prover` command: a thin shell over library calls.

It lives in workers/ because it composes every package (db, verifier, prover, conjecturer,
workers), and workers/ is the only package allowed to import them all.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Self-play training and sound evaluation of LLM theorem provers.",
                  no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="The proof database.", no_args_is_help=True)
data_app = typer.Typer(help="Benchmark data.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(data_app, name="data")

console = Console(stderr=True)
out = Console()

DbOpt = Annotated[Optional[str], typer.Option("--db", help="Database URL (default: $PROVER_DB_URL, else the embedded SQLite file).")]


def fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None, revision: str = "head") -> None:
    """Apply the schema migrations."""
    from db.migrate import current_revision, upgrade
    from db.session import make_engine, resolve_url

    engine = make_engine(db)
    upgrade(engine, revision)
    out.print(f"{resolve_url(db)}: at revision {current_revision(engine)}")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument("base"), db: DbOpt = None) -> None:
    """Revert the schema migrations (to `base` by default: drops every table)."""
    from db.migrate import current_revision, downgrade
    from db.session import make_engine

    engine = make_engine(db)
    downgrade(engine, revision)
    out.print(f"at revision {current_revision(engine)}")


@db_app.command("stats")
def db_stats(db: DbOpt = None) -> None:
    """Counts by dataset, statement origin and verdict status."""
    from db.queries import stats
    from db.session import resolve_url, session_scope

    with session_scope(db) as session:
        s = stats(session)
    out.print(f"database: {resolve_url(db)}")
    for title, cols, rows in (
        ("datasets", ("dataset", "itp", "version", "split", "statements"), s["datasets"]),
        ("statements by origin", ("origin", "statements"), s["origins"]),
        ("attempts by verdict", ("status", "attempts"), s["verdicts"]),
    ):
        table = Table(title=title)
        for c in cols:
            table.add_column(c)
        for r in rows:
            table.add_row(*[str(x) for x in r])
        out.print(table)


@data_app.command("import")
def data_import(
    source: Annotated[str, typer.Argument(help="A named benchmark (minif2f, proofnet) or a jsonl path.")],
    itp: Annotated[str, typer.Option(help="lean or coq")] = "lean",
    variant: Annotated[Optional[str], typer.Option(help="minif2f lean: v4.24 (default), deepseek-v4.9, goedel-v2")] = None,
    name: Annotated[Optional[str], typer.Option(help="Dataset name for a jsonl path (default: file stem).")] = None,
    db: DbOpt = None,
) -> None:
    """Load a benchmark into the database (idempotent; all or nothing)."""
    from db.importer import BadInputError, import_benchmark, import_jsonl
    from db.session import session_scope

    try:
        with session_scope(db) as session:
            if Path(source).suffix == ".jsonl" or Path(source).exists():
                r = import_jsonl(session, Path(source), itp=itp, dataset_name=name)
            else:
                r = import_benchmark(session, source, itp=itp, variant=variant)
    except BadInputError as exc:
        fail(str(exc))
    out.print(
        f"{r.dataset} ({r.rows} rows, sha256 {r.version[:12]}) from {r.path}: "
        f"{r.new_statements} new statements, {r.new_entries} new entries"
        + ("" if r.dataset_created else " (already imported)")
    )


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
