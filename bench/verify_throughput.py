"""Throughput of the Coq verifier: naive (one fresh coqc per proof) vs warm coqtop pool.

Both modes run the same batch on the same number of workers, in the same sandbox, and hand their
accepted proofs to the same trusted recheck (reference statements compiled from trusted text,
kernel check of the candidate against them, Print Assumptions against the allowlist), so their
verdicts must be identical. The naive mode's ``.vo`` from its one ``coqc`` per proof is the
candidate library; the warm mode compiles its accepted proofs per key afterwards.

The default batch is *small proofs*: miniF2F-rocq test statements (those that typecheck with
Coq 8.16), each with the eight one-tactic proofs of ``SMALL`` (lia, lra, subst+lra, field,
reflexivity, auto, intuition, congruence), each with the leading Require a prover would write for
it (a library, none, or the portfolio generator's catch-all line). Half the statements are ones
these proofs close (``CLOSED_BY_SMALL``, found by a scan of all 239), half the first others in
dataset order, so about one proof in seven is proved; statements where a SMALL tactic needed
over a second (``NOT_SMALL``) are left out. Every check takes well under half a second, failures
included. ``--slow`` adds nia/nra, which on many statements fail only after seconds: then the
checking itself, the same in both modes, dominates.

Reported per mode: proofs/s, the stage times, and how the worker time (wall x workers) splits
into proof checking (the time Coq spent on the proof texts, measured per request in the warm
sessions, the same work in both modes), start-up + IPC (the rest of screening: process start and
library loading per coqc, or library switches, BackTo and pipes in the warm sessions) and the
trusted compile + recheck. The last line of output is exactly
``verify_throughput ratio=<warm/naive> identical=<true|false>``.

    python bench/verify_throughput.py [--limit 40] [--timeout 20] [--workers 2] [--slow]
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

from prover.generation.portfolio import COQ_REQUIRE
from verifier.coq import CoqBackend
from verifier.types import ProofTask

# The default batch: small proofs. Each statement gets the same eight one-tactic proofs, with the
# leading Require line a prover would write for that tactic (a specific library, none, or the
# portfolio generator's catch-all line), so several Require keys per header occur, as in real output.
SMALL = (
    ("Require Import Lia.", "intros; lia"),
    ("Require Import Lra.", "intros; lra"),
    ("Require Import Lra.", "intros; subst; lra"),
    ("", "intros; field"),
    ("", "reflexivity"),
    ("", "intros; auto"),
    (COQ_REQUIRE, "intros; intuition"),
    (COQ_REQUIRE, "intros; congruence"),
)
# --slow adds the nonlinear procedures, which on many statements fail only after seconds.
SLOW = (
    ("Require Import Lia Lra Psatz.", "intros; nia"),
    ("Require Import Lia Lra Psatz.", "intros; nra"),
)
# miniF2F-rocq test statements (typechecking with Coq 8.16) that SMALL proves, from a scan of
# all 239 with Coq 8.16.1; the default batch takes half its statements from here so that a
# realistic share of the proofs succeeds (about a fifth).
CLOSED_BY_SMALL = frozenset({
    "aime_1989_p8", "amc12b_2002_p2", "amc12b_2020_p2", "mathd_algebra_107", "mathd_algebra_125",
    "mathd_algebra_142", "mathd_algebra_160", "mathd_algebra_176", "mathd_algebra_209",
    "mathd_algebra_24", "mathd_algebra_296", "mathd_algebra_304", "mathd_algebra_329",
    "mathd_algebra_354", "mathd_algebra_359", "mathd_algebra_388", "mathd_algebra_398",
    "mathd_algebra_400", "mathd_algebra_412", "mathd_algebra_419", "mathd_algebra_427",
    "mathd_algebra_432", "mathd_algebra_44", "mathd_algebra_440", "mathd_algebra_478",
    "mathd_algebra_513", "mathd_numbertheory_12", "mathd_numbertheory_175",
    "mathd_numbertheory_207", "mathd_numbertheory_212",
})
# Statements on which a SMALL tactic needed more than a second in that scan (big numerals that
# reflexivity/auto/intuition unfold, ring normal forms of large powers): not small proofs.
NOT_SMALL = frozenset({
    "amc12_2000_p1", "amc12_2001_p21", "amc12_2001_p5", "amc12a_2003_p5", "amc12a_2013_p4",
    "amc12a_2020_p4", "amc12a_2021_p9", "imo_1982_p1", "mathd_numbertheory_127",
    "mathd_numbertheory_229",
})


def data_path() -> Path:
    base = Path(os.environ.get("PROVER_DATA_DIR", ROOT.parent / "shared" / "data"))
    return base / "minif2f" / "minif2f_rocq.jsonl"


def load_tasks(limit: int, slow: bool = False) -> list[ProofTask]:
    """``limit`` statements: the first ``limit // 2`` of CLOSED_BY_SMALL and the first others
    that are not NOT_SMALL (dataset order), each with every proof of the portfolio."""
    rows = [json.loads(line) for line in data_path().read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "test" and r["typechecks_with_debian_coq_8_16"]]
    closed = [r for r in rows if r["name"] in CLOSED_BY_SMALL][: limit // 2]
    others = [r for r in rows if r["name"] not in CLOSED_BY_SMALL and r["name"] not in NOT_SMALL]
    chosen = {r["name"] for r in closed + others[: limit - len(closed)]}
    portfolio = SMALL + (SLOW if slow else ())
    return [
        ProofTask(r["header"], r["formal_statement"],
                  (req + "\n" if req else "") + f"Proof. {tac}. Qed.", id=f"{r['name']}|{tac}")
        for r in rows if r["name"] in chosen
        for req, tac in portfolio
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
                prog.update(bar, advance=n, description="compile+recheck" if done >= len(tasks) else "screening")

            backend.on_progress = tick
            t0 = time.monotonic()
            verdicts = backend.verify_batch(tasks, timeout=timeout)
            wall = time.monotonic() - t0
        stats = dict(backend.timings) | backend.pool.stats()
    finally:
        backend.close()
    return verdicts, wall, stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=40, help="number of test statements")
    ap.add_argument("--slow", action="store_true", help="add nia/nra proofs (slow failures)")
    ap.add_argument("--timeout", type=float, default=20.0, help="per-proof timeout in seconds")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    console = Console(stderr=False)
    tasks = load_tasks(args.limit, args.slow)
    per = len(SMALL) + (len(SLOW) if args.slow else 0)
    console.print(f"{len(tasks)} proofs ({per} per statement) of {len(tasks) // per} miniF2F-rocq "
                  f"test statements, {args.workers} workers, timeout {args.timeout:g}s")

    naive, t_naive, st_naive = run_mode("coqc", tasks, args.timeout, args.workers, console)
    warm, t_warm, st_warm = run_mode("warm", tasks, args.timeout, args.workers, console)

    key = lambda v: (v.status.value, v.reason)
    diffs = [(t.id, key(a), key(b)) for t, a, b in zip(tasks, naive, warm) if key(a) != key(b)]
    identical = not diffs
    n = len(tasks)
    # Proof checking: the time Coq spent on the proof texts themselves, measured per request in
    # the warm sessions; the naive mode checks the same texts, so it spends the same time on them.
    checking = st_warm.get("check", 0.0)
    for name, verdicts, wall, st in (("naive", naive, t_naive, st_naive), ("warm", warm, t_warm, st_warm)):
        counts = Counter(v.status.value for v in verdicts)
        worker = wall * args.workers
        trusted = (st["compile"] + st["recheck"]) * args.workers
        screening = st["screen"] * args.workers
        console.print(
            f"{name:>5}: {n / wall:6.2f} proofs/s  wall {wall:6.1f}s  (screen {st['screen']:.1f}s, "
            f"compile+refs {st['compile']:.1f}s, recheck {st['recheck']:.1f}s)  "
            + " ".join(f"{k}={c}" for k, c in sorted(counts.items()))
        )
        console.print(
            f"       of worker time (wall x {args.workers}): proof checking {100 * checking / worker:4.1f}%, "
            f"start-up+IPC {100 * max(0.0, screening - checking) / worker:4.1f}%, "
            f"compile+recheck {100 * trusted / worker:4.1f}%"
        )
    console.print(
        f"        warm screening: {st_warm.get('created', 0)} sessions started, library loads "
        f"{st_warm.get('load', 0.0):.1f}s, proof checking {checking:.1f}s, IPC+reset "
        f"{st_warm.get('reset', 0.0):.2f}s ({1000 * st_warm.get('reset', 0.0) / max(1, n):.1f} ms/proof)"
    )
    for d in diffs[:10]:
        console.print(f"[red]differs[/]: {d}")
    ratio = t_naive / t_warm if t_warm else float("inf")
    print(f"verify_throughput ratio={ratio:.2f} identical={'true' if identical else 'false'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
