"""Throughput of the Coq verifier: naive (one fresh coqc per proof) vs warm coqtop pool.

Both modes run the same batch of portfolio proofs of miniF2F-rocq test statements on the same
number of workers and the same trusted recheck (compiled-library reload, kernel statement check,
Print Assumptions), so their verdicts must be identical. The last line of output is exactly
``verify_throughput ratio=<warm/naive> identical=<true|false>``.

    python bench/verify_throughput.py [--limit 40] [--timeout 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from verifier.coq import CoqBackend
from verifier.types import ProofTask

TACTICS = ("intros; lia", "intros; lra", "intros; nia")


def data_path() -> Path:
    base = Path(os.environ.get("PROVER_DATA_DIR", ROOT.parent / "shared" / "data"))
    return base / "minif2f" / "minif2f_rocq.jsonl"


def load_tasks(limit: int) -> list[ProofTask]:
    rows = [json.loads(line) for line in data_path().read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "test" and r["typechecks_with_debian_coq_8_16"]][:limit]
    return [
        ProofTask(r["header"], r["formal_statement"],
                  f"Require Import Lia Lra Psatz.\nProof. {tac}. Qed.", id=f"{r['name']}|{tac}")
        for r in rows
        for tac in TACTICS
    ]


def run_mode(mode: str, tasks: list[ProofTask], timeout: float, workers: int, console: Console):
    backend = CoqBackend(mode=mode, pool_size=workers)
    try:
        with Progress(
            TextColumn(f"[bold]{mode:>5}[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"), console=console, disable=not console.is_terminal,
        ) as prog:
            bar = prog.add_task("screening", total=len(tasks))

            def tick(n: int) -> None:
                done = prog.tasks[0].completed + n
                prog.update(bar, advance=n, description="recheck" if done >= len(tasks) else "screening")

            backend.on_progress = tick
            t0 = time.monotonic()
            verdicts = backend.verify_batch(tasks, timeout=timeout)
            wall = time.monotonic() - t0
        return verdicts, wall, dict(backend.timings)
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=40, help="number of test statements (x3 proofs)")
    ap.add_argument("--timeout", type=float, default=20.0, help="per-proof timeout in seconds")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    console = Console(stderr=False)
    tasks = load_tasks(args.limit)
    console.print(f"{len(tasks)} proofs of {len(tasks) // len(TACTICS)} statements, "
                  f"{args.workers} workers, timeout {args.timeout:g}s")

    naive, t_naive, tm_naive = run_mode("coqc", tasks, args.timeout, args.workers, console)
    warm, t_warm, tm_warm = run_mode("warm", tasks, args.timeout, args.workers, console)

    key = lambda v: (v.status.value, v.reason)
    diffs = [(t.id, key(a), key(b)) for t, a, b in zip(tasks, naive, warm) if key(a) != key(b)]
    identical = not diffs
    n = len(tasks)
    # time Coq spent on the proofs themselves, measured inside the warm sessions
    checking = tm_warm.get("attempt", 0.0)
    for name, verdicts, wall, tm in (("naive", naive, t_naive, tm_naive), ("warm", warm, t_warm, tm_warm)):
        counts = Counter(v.status.value for v in verdicts)
        frac = min(1.0, checking / (wall * args.workers)) if wall else 0.0
        console.print(
            f"{name:>5}: {n / wall:6.2f} proofs/s  wall {wall:6.1f}s  "
            f"(screen {tm['screen']:.1f}s, compile {tm['compile']:.1f}s, recheck {tm['recheck']:.1f}s)  "
            f"proof checking {100 * frac:4.1f}% / start-up+IPC+recheck {100 * (1 - frac):4.1f}% of worker time  "
            + " ".join(f"{k}={c}" for k, c in sorted(counts.items()))
        )
    for d in diffs[:10]:
        console.print(f"[red]differs[/]: {d}")
    ratio = t_naive / t_warm if t_warm else float("inf")
    print(f"verify_throughput ratio={ratio:.2f} identical={'true' if identical else 'false'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
