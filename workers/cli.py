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


def _mount_optional() -> None:
    from conjecturer.cli import conjecture
    from prover.train.cli import train_app

    app.add_typer(train_app, name="train", help="Expert iteration (weighted SFT), RL, averaging.")
    app.command("conjecture")(conjecture)


_mount_optional()

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


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=not console.is_terminal)


def _verifier_opts(itp: str, workers: int, unsafe_no_sandbox: bool, lean_project: str | None,
                   allow_native_decide: bool) -> dict:
    """Options for `verifier.backend_from_options` (plain data: they travel to Celery tasks)."""
    opts: dict = {"workers": workers, "unsafe_no_sandbox": unsafe_no_sandbox}
    if itp == "lean":
        opts |= {"lean_project": lean_project, "allow_native_decide": allow_native_decide}
    return opts


Itp = Annotated[str, typer.Option("--itp", help="lean or coq")]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds per proof (wall clock).")]
Workers = Annotated[int, typer.Option("--workers", help="Warm verifier processes.")]
Unsafe = Annotated[bool, typer.Option("--unsafe-no-sandbox", help="Run proofs without bubblewrap (recorded in every verdict).")]
LeanProject = Annotated[Optional[str], typer.Option("--lean-project", envvar="PROVER_LEAN_PROJECT", help="Mathlib project with the REPL built (lean only).")]
NativeDecide = Annotated[bool, typer.Option("--allow-native-decide", help="Accept Lean.ofReduceBool (native_decide).")]
ViaCelery = Annotated[bool, typer.Option("--via-celery", help="Verify on Celery workers (PROVER_BROKER_URL).")]


@app.command("verify")
def verify_cmd(
    itp: Itp = "coq",
    input: Annotated[Path, typer.Option("--input", help="jsonl rows {id, header, statement, proof}")] = ...,  # type: ignore[assignment]
    output: Annotated[Optional[Path], typer.Option("--output", help="jsonl verdicts (default stdout)")] = None,
    timeout: Timeout = 60.0,
    workers: Workers = 2,
    unsafe_no_sandbox: Unsafe = False,
    lean_project: LeanProject = None,
    allow_native_decide: NativeDecide = False,
    via_celery: ViaCelery = False,
) -> None:
    """Check proofs. Proof failures are data (exit 0); malformed input exits 2."""
    from verifier.io import BadRows, read_rows, write_verdicts

    itp = itp.strip().lower()
    if itp not in ("coq", "rocq", "lean", "lean4"):
        fail(f"--itp {itp!r}: expected coq or lean")
    if workers < 1:
        fail(f"--workers {workers}: need at least 1")
    if not timeout > 0:
        fail(f"--timeout {timeout}: must be positive")
    try:
        tasks, ids = read_rows(input)
    except BadRows as exc:
        fail(str(exc))
    opts = _verifier_opts(itp, workers, unsafe_no_sandbox, lean_project, allow_native_decide)
    verdicts = []
    with _progress() as progress:
        bar = progress.add_task(f"verify ({itp})", total=len(tasks))
        if via_celery:
            from workers.dispatch import verify_tasks_via_celery

            verdicts = verify_tasks_via_celery(
                itp, tasks, timeout=timeout, verifier_opts=opts,
                progress=lambda d, t: progress.update(bar, completed=d * len(tasks) // max(t, 1)))
        else:
            from verifier import SandboxUnavailable, backend_from_options

            try:
                backend = backend_from_options(itp, **opts)
            except SandboxUnavailable as exc:
                fail(f"{exc} (or pass --unsafe-no-sandbox)", code=1)
            try:
                step = max(4 * workers, 8)
                for start in range(0, len(tasks), step):
                    verdicts += backend.verify_batch(tasks[start : start + step], timeout=timeout)
                    progress.update(bar, completed=len(verdicts))
            finally:
                backend.close()
    write_verdicts(tasks, verdicts, output, ids=ids)
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.status.value] = counts.get(v.status.value, 0) + 1
    console.print(f"{len(verdicts)} proofs: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))


@app.command("eval")
def eval_cmd(
    bench: Annotated[str, typer.Argument(help="minif2f, proofnet, or an imported dataset name")],
    itp: Itp = "lean",
    variant: Annotated[Optional[str], typer.Option(help="Benchmark file variant (see `prover data import`).")] = None,
    split: str = "test",
    backend: Annotated[str, typer.Option(help="hf | openai | vllm | portfolio")] = "portfolio",
    model: Annotated[Optional[str], typer.Option(help="Model path or served name.")] = None,
    prompt: Annotated[Optional[str], typer.Option(help="deepseek-v1.5 | stp | goedel-v2 | coq | coq-chat")] = None,
    n: Annotated[int, typer.Option("-n", help="Samples per problem.")] = 1,
    k: Annotated[str, typer.Option("-k", help="Comma-separated k values for pass@k.")] = "1",
    rounds: Annotated[int, typer.Option(help="Self-correction rounds (Goedel-Prover-V2).")] = 0,
    temperature: float = 1.0,
    top_p: float = 0.95,
    max_tokens: int = 1024,
    seed: int = 0,
    timeout: Timeout = 60.0,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N problems (by name).")] = None,
    workers: Workers = 2,
    report: Annotated[Optional[Path], typer.Option("--report", help="Report directory.")] = None,
    base_url: Annotated[Optional[str], typer.Option(help="openai backend: server URL.")] = None,
    tensor_parallel_size: Annotated[int, typer.Option(help="vllm backend.")] = 1,
    db: DbOpt = None,
    unsafe_no_sandbox: Unsafe = False,
    lean_project: LeanProject = None,
    allow_native_decide: NativeDecide = False,
    via_celery: ViaCelery = False,
) -> None:
    """Sample proofs, check every one, report pass@k (resumable)."""
    from db.session import get_engine
    from prover.eval import EvalSpec, in_process_checker, run_eval
    from prover.report import print_table, write_report

    from prover.generation.base import GenerationError

    itp = itp.strip().lower()
    if itp not in ("coq", "lean"):
        fail(f"--itp {itp!r}: expected coq or lean")
    backend_opts: dict = {}
    if backend == "openai" and base_url:
        backend_opts["base_url"] = base_url
    if backend == "vllm":
        backend_opts["tensor_parallel_size"] = tensor_parallel_size
    try:
        ks = tuple(int(x) for x in k.split(",") if x.strip())
    except ValueError:
        fail(f"-k {k!r}: expected comma-separated integers, e.g. -k 1,8,32")
    if not ks:
        fail("-k: give at least one k")
    for name, value in (("-n", n), ("--max-tokens", max_tokens), ("--workers", workers)):
        if value < 1:
            fail(f"{name} {value}: must be at least 1")
    if rounds < 0 or (limit is not None and limit < 1) or not timeout > 0:
        fail("--rounds must be >= 0, --limit >= 1 and --timeout > 0")
    try:
        spec = EvalSpec(benchmark=bench, itp=itp, variant=variant, split=split, backend=backend,
                        model=model, prompt=prompt, n=n, ks=ks,
                        rounds=rounds, temperature=temperature, top_p=top_p,
                        max_tokens=max_tokens, seed=seed, timeout=timeout, limit=limit,
                        backend_opts=backend_opts)
        spec.sampling()  # temperature / top_p / prompt format checked before any work
    except ValueError as exc:
        fail(str(exc))
    opts = _verifier_opts(itp, workers, unsafe_no_sandbox, lean_project, allow_native_decide)
    engine = get_engine(db)
    verifier_backend = None
    if via_celery:
        from workers.dispatch import celery_checker

        checker = celery_checker(itp, timeout, opts)
    else:
        from verifier import SandboxUnavailable, backend_from_options

        try:
            verifier_backend = backend_from_options(itp, **opts)
        except SandboxUnavailable as exc:
            fail(f"{exc} (or pass --unsafe-no-sandbox)", code=1)
        checker = in_process_checker(verifier_backend, timeout)
    try:
        with _progress() as progress:
            bars: dict[str, int] = {}

            def on_progress(phase: str, done: int, total: int) -> None:
                if phase not in bars:
                    bars[phase] = progress.add_task(phase, total=total)
                progress.update(bars[phase], completed=done, total=total)

            result = run_eval(spec, db=engine, checker=checker, progress=on_progress)
    except (LookupError, ValueError) as exc:  # unknown dataset, bad benchmark file, bad options
        fail(str(exc))
    except GenerationError as exc:  # stored work is kept: re-running resumes
        fail(f"generation failed: {exc} (re-run the same command to resume)", code=1)
    finally:
        if verifier_backend is not None:
            verifier_backend.close()
    print_table(result, out)
    out_dir = report or Path("reports") / result.run_name
    paths = write_report(result, out_dir)
    out.print(f"report: {paths['md']} ({paths['json'].name}, {paths['png'].name})")


@app.command("selfplay")
def selfplay_cmd(
    config: Annotated[Path, typer.Option("--config", help="A self-play recipe (YAML).")],
    rounds: Annotated[Optional[int], typer.Option(help="Rounds to run (default: the recipe's).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue the run if it exists.")] = True,
    celery: Annotated[Optional[bool], typer.Option("--via-celery/--in-process", help="Override the recipe's `celery`.")] = None,
    db: DbOpt = None,
) -> None:
    """Run (or resume) self-play rounds; every step's state is in the database."""
    from workers.selfplay import SelfPlayConfig, run_selfplay

    try:
        cfg = SelfPlayConfig.from_yaml(config, celery=celery)
    except (OSError, ValueError, TypeError) as exc:
        fail(f"{config}: {exc}")
    try:
        summaries = run_selfplay(cfg, db=db, rounds=rounds, resume=resume,
                                 log=lambda m: console.print(m, markup=False))
    except ValueError as exc:
        fail(str(exc))
    for s in summaries:
        ev = s["counts"].get("evaluate", {})
        vf = s["counts"].get("verify", {})
        gen = s["counts"].get("conjecture", {})
        sel = s["counts"].get("select", {})
        out.print(
            f"round {s['round']}: proved {vf.get('proved_statements', 0)}/{vf.get('attempted', 0)} "
            f"targets, conjectures stored {gen.get('stored', 0)}, selected {sel.get('selected', 0)}, "
            + ", ".join(f"{k} {v}" for k, v in ev.items() if k.startswith("pass@"))
            + f", {sum(s['timings'].values()):.0f}s", markup=False)


@app.command("worker")
def worker_cmd(
    queues: Annotated[str, typer.Option(help="Comma-separated: generate,train,verify,control")] = "verify,control",
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    loglevel: str = "info",
    hostname: Annotated[Optional[str], typer.Option(help="Celery node name.")] = None,
) -> None:
    """Start a Celery worker (broker: PROVER_BROKER_URL, else the embedded SQLite broker)."""
    from workers.app import app as celery_app

    argv = ["worker", "-Q", queues, "-c", str(concurrency), "--loglevel", loglevel]
    if hostname:
        argv += ["-n", hostname]
    celery_app.worker_main(argv)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
