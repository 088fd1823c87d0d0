"""``prover conjecture --round N``: one conjecture round, in process (a thin shell over
:func:`conjecturer.pipeline.run_conjecture_round`).

Mount with ``app.command("conjecture")(conjecturer.cli.conjecture)``; ``conjecture_app`` is
the same command as a stand-alone Typer app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

conjecture_app = typer.Typer(help="STP conjecturing: seeds, conjectures, selection, training sets.")


@conjecture_app.command()
def conjecture(
    round_index: Annotated[int, typer.Option("--round", help="Round index of the self-play run.")],
    run: Annotated[str, typer.Option("--run", help="Self-play run name.")] = "selfplay",
    itp: Annotated[str, typer.Option("--itp", help="lean or coq")] = "coq",
    backend: Annotated[str, typer.Option(help="Generation backend: hf | openai | vllm")] = "hf",
    model: Annotated[Optional[str], typer.Option(help="Conjecturer (and prover) model path or name.")] = None,
    prover_model: Annotated[Optional[str], typer.Option(help="A separate prover model (default: --model).")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Seed/target dataset (default: all benchmark statements).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Seed/target split of --dataset.")] = None,
    eval_split: Annotated[list[str], typer.Option("--eval-split", help="Evaluation splits to decontaminate against.")] = ["test"],  # noqa: B006
    conjectures_per_seed: Annotated[int, typer.Option(help="Conjecture samples per seed.")] = 1,
    max_seeds: Annotated[Optional[int], typer.Option(help="Cap on the number of seeds.")] = None,
    samples: Annotated[int, typer.Option("-n", help="Prover samples per conjecture (STP: 32-64).")] = 32,
    max_tokens: Annotated[int, typer.Option(help="Max new tokens per conjecture.")] = 512,
    ngram_threshold: Annotated[Optional[float], typer.Option(help="Also decontaminate by n-gram overlap >= this.")] = None,
    no_scaffold: Annotated[bool, typer.Option("--no-scaffold", help="Skip scaffolded sub-goals.")] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="Training sets directory.")] = Path("data/selfplay"),
    timeout: Annotated[float, typer.Option(help="Seconds per proof check.")] = 60.0,
    workers: Annotated[int, typer.Option(help="Warm verifier processes.")] = 2,
    unsafe_no_sandbox: Annotated[bool, typer.Option("--unsafe-no-sandbox", help="Run checks without bubblewrap.")] = False,
    seed: int = 0,
    db: Annotated[Optional[str], typer.Option("--db", help="Database URL.")] = None,
) -> None:
    """Generate, check, filter and store conjectures; let the prover attempt them; select the
    barely provable ones; scaffold failed proofs; write both roles' training sets."""
    from conjecturer.pipeline import ConjectureConfig, run_conjecture_round
    from prover.generation import make_generator
    from verifier import get_backend

    if model is None and backend != "openai":
        raise typer.BadParameter("--model is required for the hf and vllm backends")
    cfg = ConjectureConfig(dataset=dataset, split=split, eval_splits=tuple(eval_split),
                           conjectures_per_seed=conjectures_per_seed, max_seeds=max_seeds,
                           prove_samples=samples, max_tokens=max_tokens,
                           ngram_threshold=ngram_threshold, scaffold=not no_scaffold,
                           verify_timeout=timeout, seed=seed)
    opts: dict = {"pool_size": workers}
    if unsafe_no_sandbox:
        from verifier import Sandbox

        opts["sandbox"] = Sandbox(enabled=False)
    gen = make_generator(backend, model=model)
    prover_gen = make_generator(backend, model=prover_model) if prover_model else None
    checker = get_backend(itp, **opts)
    try:
        report = run_conjecture_round(db, run_name=run, round_index=round_index, itp=itp,
                                      generator=gen, prover_generator=prover_gen,
                                      backend=checker, config=cfg, out_dir=out_dir)
    finally:
        checker.close()
    typer.echo(json.dumps({"run_id": report.run_id, "round": report.round_index,
                           "counts": report.counts, "training_sets": report.training_sets,
                           "timings": report.timings}, indent=2, default=str))
