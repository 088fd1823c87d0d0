"""``prover train ...``: thin shells over :mod:`prover.train`.

    prover train sft --config configs/sft.yaml [--data round3.jsonl] [--output-dir ...]
    prover train rl --config configs/grpo.yaml
    prover train average BASE TUNED OUT --alpha 0.8

Also runnable as a module, which is what ``accelerate launch`` needs:

    accelerate launch --config_file configs/accelerate/zero3.yaml \\
        -m prover.train.cli sft --config configs/sft.yaml

Every command registers its checkpoint in the database given by ``--db`` (default:
$PROVER_DB_URL, else the embedded SQLite file). Under a multi-process launch only the main
process writes the registry row.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

train_app = typer.Typer(help="Training: weighted SFT / expert iteration, RL, checkpoint averaging.",
                        no_args_is_help=True, add_completion=False)

DbOpt = Annotated[str | None, typer.Option(
    "--db", help="Database URL (default: $PROVER_DB_URL, else the embedded SQLite file).")]


def _is_main_process() -> bool:
    try:
        from accelerate import PartialState

        return bool(PartialState().is_main_process)
    except Exception:  # noqa: BLE001
        return True


def _parse_sets(sets: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` overrides (value parsed as YAML: numbers, booleans, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for s in sets or []:
        if "=" not in s:
            raise typer.BadParameter(f"--set expects key=value, got {s!r}")
        k, v = s.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _echo(payload: dict[str, Any]) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


@train_app.command("sft")
def sft_cmd(
    config: Annotated[str | None, typer.Option("--config", "-c", help="A weighted-SFT recipe (YAML).")] = None,
    model: Annotated[str | None, typer.Option(help="Checkpoint to continue from (init=previous).")] = None,
    base_model: Annotated[str | None, typer.Option(help="Base model (init=base re-trains from it).")] = None,
    init: Annotated[str | None, typer.Option(help="previous (STP: continue) | base (expert-iteration baseline).")] = None,
    data: Annotated[list[str] | None, typer.Option("--data", help="JSON-lines file(s) with prompt, completion, weight; repeatable.")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Where the trained checkpoint is saved.")] = None,
    run: Annotated[str | None, typer.Option(help="Self-play run the checkpoint belongs to.")] = None,
    round_index: Annotated[int | None, typer.Option("--round", help="Round index within the run.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any config key: key=value.")] = None,
    no_register: Annotated[bool, typer.Option("--no-register", help="Do not write the checkpoint registry.")] = False,
    db: DbOpt = None,
) -> None:
    """Weighted SFT on (prompt, completion, weight) rows; saves and registers the checkpoint."""
    from prover.train.sft import WeightedSFTConfig, train_sft

    over = dict(model=model, base_model=base_model, init=init, data=list(data) if data else None,
                output_dir=output_dir, run=run, round_index=round_index, **_parse_sets(set_))
    if config:
        cfg = WeightedSFTConfig.from_yaml(config, **over)
    else:
        cfg = WeightedSFTConfig.from_dict({k: v for k, v in over.items() if v is not None})
    res = train_sft(cfg, db=db, register=not no_register and _is_main_process())
    if _is_main_process():
        _echo({"path": res.path, "checkpoint_id": res.checkpoint_id, "metrics": res.metrics})


@train_app.command("rl")
def rl_cmd(
    config: Annotated[str | None, typer.Option("--config", "-c", help="A GRPO recipe (YAML).")] = None,
    model: Annotated[str | None, typer.Option(help="Policy checkpoint to start from.")] = None,
    data: Annotated[list[str] | None, typer.Option("--data", help="JSON-lines RL rows (prompt, header, statement, ...); repeatable.")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Where the trained policy is saved.")] = None,
    run: Annotated[str | None, typer.Option(help="RL run name (attempts are stored under it).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any config key: key=value.")] = None,
    no_register: Annotated[bool, typer.Option("--no-register", help="Do not write the checkpoint registry.")] = False,
    db: DbOpt = None,
) -> None:
    """GRPO with the verifier as reward; rollouts and verdicts are stored as Attempts."""
    from prover.train.rl import RLConfig, train_rl

    over = dict(model=model, data=list(data) if data else None, output_dir=output_dir, run=run,
                **_parse_sets(set_))
    if config:
        cfg = RLConfig.from_yaml(config, **over)
    else:
        cfg = RLConfig.from_dict({k: v for k, v in over.items() if v is not None})
    res = train_rl(cfg, db=db, register=not no_register and _is_main_process())
    if _is_main_process():
        _echo({"path": res.path, "checkpoint_id": res.checkpoint_id, "run": res.run,
               "metrics": res.metrics})


@train_app.command("average")
def average_cmd(
    base: Annotated[str, typer.Argument(help="Base checkpoint directory (θ_base).")],
    tuned: Annotated[str, typer.Argument(help="Fine-tuned checkpoint directory (θ).")],
    out: Annotated[str, typer.Argument(help="Output directory.")],
    alpha: Annotated[float, typer.Option("--alpha", "-a", help="θ = (1-α)·θ_base + α·θ; Goedel-V2 swept 0.6-0.9.")] = 0.8,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty output directory.")] = False,
    run: Annotated[str | None, typer.Option(help="Run the averaged checkpoint belongs to.")] = None,
    round_index: Annotated[int | None, typer.Option("--round", help="Round index within the run.")] = None,
    no_register: Annotated[bool, typer.Option("--no-register", help="Do not write the checkpoint registry.")] = False,
    db: DbOpt = None,
) -> None:
    """Average two checkpoints tensor by tensor (streaming over safetensors shards)."""
    from prover.train.average import AverageError, average_and_register, average_checkpoints

    try:
        if no_register:
            path, ckpt = average_checkpoints(base, tuned, out, alpha, overwrite=overwrite), None
        else:
            path, ckpt = average_and_register(base, tuned, out, alpha, db=db, run=run,
                                              round_index=round_index, overwrite=overwrite)
    except AverageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _echo({"path": str(path), "checkpoint_id": ckpt, "alpha": alpha})


def main() -> None:  # `python -m prover.train.cli ...` (accelerate launch -m ...)
    train_app()


if __name__ == "__main__":
    main()
