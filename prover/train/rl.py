"""RL with the verifier as reward: TRL's GRPOTrainer, configured the Goedel-Prover-V2 way.

Defaults (:class:`RLConfig`): no KL (``beta=0``); Dr.GRPO advantages (group mean subtracted,
no division by the group std: ``scale_rewards="none"``); a token-averaged loss over the global
batch (``loss_type="dapo"``; ``"dr_grpo"`` divides by a constant instead); DAPO clip-higher
(``epsilon=0.2``, ``epsilon_high=0.28``); DAPO's soft overlong penalty (a second reward with a
4K-token buffer); dynamic sampling that drops groups whose pass rate is 0 or above 0.75.

What TRL lacks, and is added here:

- **Dynamic sampling.** GRPOTrainer has no group filter. :class:`VerifierGRPOTrainer` computes
  each group's pass rate from the verifier reward (over all processes, after TRL gathers the
  rewards) and masks the groups outside ``(low, high]``: their completion tokens leave the loss
  mask and the token count the loss is averaged over, and their advantages are zeroed. DAPO
  additionally *refills* the batch by sampling more prompts until it is full; TRL's fixed
  generation batch cannot do that, so the batch shrinks instead. To get DAPO's effective batch,
  over-sample prompts (Goedel-V2 over-samples 3x: raise ``generation_batch_size``) and/or
  pre-filter the prompt set with :func:`filter_by_pass_rate` using pass rates from the DB.
- **Mixed whole-proof and self-correction inputs.** TRL decides per batch whether prompts are
  chat conversations. So every prompt is rendered to text up front: whole-proof prompts are
  the prompt format's text (or its chat rendering for chat formats), correction prompts are the
  conversation of :func:`prover.correction.correction_conversation` rendered with the
  tokenizer's chat template. Rows carry ``kind`` (how to extract the proof: ``completion`` or
  ``chat``) and ``mode`` (``whole-proof`` or ``correction``) for the reward and the DB.
- **Rollout storage.** :class:`prover.train.rewards.VerifierReward` stores every rollout and its
  verdict as an Attempt of the RL run (see there for the key).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from prover.generation.base import render_chat
from prover.recipe import Recipe
from prover.train.rewards import OverlongPenalty, VerifierReward
from prover.train.sft import checkpointing_kwargs

# ----------------------------------------------------------------------------- config


@dataclass
class RLConfig(Recipe):
    """A GRPO recipe. Batch: ``per_device_train_batch_size x gradient_accumulation_steps x
    processes`` rollouts per optimizer step, ``num_generations`` rollouts per prompt
    (Goedel-V2: 128 prompts x 8 rollouts)."""

    model: str
    output_dir: str
    base_model: str | None = None
    data: list[str] = field(default_factory=list)  # JSON-lines rows (see whole_proof_row etc.)
    learning_rate: float = 1e-6
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 16
    num_generations: int = 8
    generation_batch_size: int | None = None  # over-sample prompts here for dynamic sampling
    max_completion_length: int = 8192
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0  # no KL
    epsilon: float = 0.2
    epsilon_high: float | None = 0.28  # DAPO clip-higher; None: symmetric clipping
    scale_rewards: str = "none"  # Dr.GRPO: no std normalization ("group" is vanilla GRPO)
    loss_type: str = "dapo"  # token-averaged over the global batch; "dr_grpo": constant normalizer
    mask_truncated_completions: bool = False
    overlong_buffer: int = 4096  # DAPO soft overlong penalty; 0 disables
    overlong_penalty_factor: float = 1.0
    dynamic_sampling: bool = True
    pass_rate_low: float = 0.0  # keep groups with low < pass rate <= high
    pass_rate_high: float = 0.75
    use_vllm: bool = False
    vllm_mode: str = "colocate"  # "colocate" | "server" (trl vllm-serve)
    itp: str = "coq"
    verify_timeout: float = 60.0
    verifier_workers: int = 4
    verifier_opts: dict[str, Any] = field(default_factory=dict)
    run: str | None = None  # the RL run (attempts and the checkpoint hang off it)
    store_attempts: bool = True
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_strategy: str = "no"
    report_to: str = "none"
    trl_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        if not 0.0 <= self.pass_rate_low < self.pass_rate_high <= 1.0:
            raise ValueError("need 0 <= pass_rate_low < pass_rate_high <= 1")
        if self.overlong_buffer and self.overlong_buffer >= self.max_completion_length:
            raise ValueError(
                f"overlong_buffer ({self.overlong_buffer}) must be smaller than "
                f"max_completion_length ({self.max_completion_length}); 0 disables the penalty"
            )

    def to_trl(self) -> GRPOConfig:
        kw: dict[str, Any] = dict(
            output_dir=self.output_dir,
            learning_rate=self.learning_rate,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            num_generations=self.num_generations,
            max_completion_length=self.max_completion_length,
            temperature=self.temperature,
            top_p=self.top_p,
            beta=self.beta,
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
            scale_rewards=self.scale_rewards,
            loss_type=self.loss_type,
            mask_truncated_completions=self.mask_truncated_completions,
            use_vllm=self.use_vllm,
            vllm_mode=self.vllm_mode,
            seed=self.seed,
            data_seed=self.seed,
            bf16=self.bf16,
            **checkpointing_kwargs(GRPOConfig, self.gradient_checkpointing),
            logging_steps=self.logging_steps,
            save_strategy=self.save_strategy,
            report_to=self.report_to,
            optim="adamw_torch",
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        if self.generation_batch_size is not None:
            kw["generation_batch_size"] = self.generation_batch_size
        if self.overlong_buffer:
            kw["reward_weights"] = [1.0, 1.0]
        kw.update(self.trl_args)
        return GRPOConfig(**kw)


# ----------------------------------------------------------------------------- dataset rows


def whole_proof_row(
    prompt_format: str,
    header: str,
    statement: str,
    *,
    tokenizer: Any = None,
    statement_id: int | None = None,
    name: str | None = None,
    informal: str | None = None,
) -> dict[str, Any]:
    """A whole-proof RL input in ``prompt_format`` (chat formats need ``tokenizer``)."""
    from prover.prompts import get_format

    fmt = get_format(prompt_format)
    prompt = fmt.build(header, statement, informal)
    if not isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError(f"prompt format {prompt_format!r} is a chat format: pass tokenizer")
        prompt = render_chat(tokenizer, prompt)
    return {
        "prompt": prompt, "header": header, "statement": statement, "itp": fmt.itp,
        "kind": fmt.kind, "mode": "whole-proof", "correction_round": 0,
        "statement_id": statement_id, "parent_attempt_id": None, "name": name,
    }


def correction_row(
    prompt_format: str,
    header: str,
    statement: str,
    previous_completion: str,
    errors: Sequence[Any],
    *,
    tokenizer: Any,
    statement_id: int | None = None,
    parent_attempt_id: int | None = None,
    correction_round: int = 1,
    previous_proof: str | None = None,
    previous_helpers: str = "",
    name: str | None = None,
) -> dict[str, Any]:
    """A first-round (or later) self-correction RL input: the original prompt, the failed
    answer and the compiler errors (``verifier.types.Message`` or their dicts), rendered as
    text. The answer is a chat answer, so the proof is taken from its last fenced block."""
    from prover.correction import attempt_code, correction_conversation
    from prover.prompts import get_format
    from verifier.types import Message

    fmt = get_format(prompt_format)
    msgs = [Message(**m) if isinstance(m, dict) else m for m in errors]
    original = fmt.build(header, statement)
    if fmt.is_chat and previous_proof is not None:
        code, offset = attempt_code(statement, previous_proof, header=header, helpers=previous_helpers)
        conv = correction_conversation(original, previous_completion, msgs, code=code,
                                       proof_line_offset=offset, itp=fmt.itp)
    else:
        conv = correction_conversation(original, previous_completion, msgs, itp=fmt.itp)
    return {
        "prompt": render_chat(tokenizer, conv), "header": header, "statement": statement,
        "itp": fmt.itp, "kind": "chat", "mode": "correction",
        "correction_round": int(correction_round), "statement_id": statement_id,
        "parent_attempt_id": parent_attempt_id, "name": name,
    }


def mix_rows(
    whole: Sequence[dict[str, Any]],
    corrections: Sequence[dict[str, Any]],
    *,
    correction_fraction: float = 0.5,
    size: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``size`` rows (default: as many as the fraction allows without repeating), a
    ``correction_fraction`` of them correction inputs (Goedel-V2: 50%), shuffled."""
    if not 0.0 <= correction_fraction <= 1.0:
        raise ValueError("correction_fraction must be in [0, 1]")
    rng = random.Random(seed)
    if size is None:
        if correction_fraction in (0.0, 1.0):
            size = len(corrections) if correction_fraction == 1.0 else len(whole)
        else:
            size = int(min(len(whole) / (1 - correction_fraction), len(corrections) / correction_fraction))
    n_corr = round(size * correction_fraction)
    n_whole = size - n_corr
    if n_corr > len(corrections) or n_whole > len(whole):
        raise ValueError(f"need {n_whole} whole-proof and {n_corr} correction rows; have "
                         f"{len(whole)} and {len(corrections)}")
    rows = rng.sample(list(whole), n_whole) + rng.sample(list(corrections), n_corr)
    rng.shuffle(rows)
    return rows


def correction_rows_from_run(
    session: Any,
    run_id: int,
    *,
    prompt_format: str,
    tokenizer: Any,
    round_index: int | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """First-round correction inputs from the failed whole-proof attempts of a run that have
    compiler messages (a rollout with no extractable proof has nothing to correct)."""
    from db.models import Statement
    from db.queries import attempts_of_run

    rows = []
    for a in attempts_of_run(session, run_id, round_index=round_index):
        if a.mode != "whole-proof" or a.status not in ("failed",) or not a.messages or a.completion is None:
            continue
        st = session.get(Statement, a.statement_id)
        rows.append(correction_row(
            prompt_format, st.header, st.formal_statement, a.completion, a.messages,
            tokenizer=tokenizer, statement_id=a.statement_id, parent_attempt_id=a.id,
            previous_proof=a.proof, name=st.name,
        ))
        if limit is not None and len(rows) >= limit:
            break
    return rows


def filter_by_pass_rate(
    rows: Sequence[dict[str, Any]],
    pass_rates: dict[int, float],
    *,
    low: float = 0.0,
    high: float = 0.75,
    keep_unknown: bool = True,
) -> list[dict[str, Any]]:
    """Offline difficulty targeting: keep rows whose statement's known pass rate is in
    ``(low, high]`` (rows of statements never attempted are kept unless ``keep_unknown`` is
    False). ``pass_rates``: statement id -> pass rate (e.g. from ``db.queries.pass_rates``)."""
    out = []
    for r in rows:
        rate = pass_rates.get(r.get("statement_id")) if r.get("statement_id") is not None else None
        if rate is None:
            if keep_unknown:
                out.append(r)
        elif low < rate <= high:
            out.append(r)
    return out


def load_rl_dataset(source: Any):
    """A :class:`datasets.Dataset` of RL rows from a Dataset, a list of dicts or JSON-lines
    paths. Requires ``prompt``, ``header``, ``statement``; fills ``itp``/``kind``/``mode``."""
    from datasets import Dataset

    from prover.train.sft import read_jsonl

    if isinstance(source, Dataset):
        rows = source.to_list()
    elif isinstance(source, (str, Path)):
        rows = read_jsonl([source])
    elif isinstance(source, (list, tuple)) and (not source or isinstance(source[0], dict)):
        rows = [dict(r) for r in source]
    else:
        rows = read_jsonl(source)
    if not rows:
        raise ValueError("the RL prompt set is empty")
    for i, r in enumerate(rows):
        missing = [c for c in ("prompt", "header", "statement") if c not in r]
        if missing:
            raise ValueError(f"RL row {i} lacks {missing}")
        if not isinstance(r["prompt"], str):
            raise ValueError(f"RL row {i}: prompts must be rendered text (see render_chat)")  # noqa: TRY004
        r.setdefault("itp", "coq")
        r.setdefault("kind", "completion")
        r.setdefault("mode", "whole-proof")
        r.setdefault("correction_round", 1 if r["mode"] == "correction" else 0)
        r.setdefault("statement_id", None)
        r.setdefault("parent_attempt_id", None)
        r.setdefault("name", None)
    return Dataset.from_list(rows)


# ----------------------------------------------------------------------------- trainer


def group_keep_mask(passed: torch.Tensor, group_size: int, low: float = 0.0,
                    high: float = 0.75) -> torch.Tensor:
    """Per-rollout keep flags for dynamic sampling: a group (``group_size`` consecutive
    rollouts of one prompt) is kept when ``low < pass rate <= high``."""
    rate = passed.float().view(-1, group_size).mean(dim=1)
    keep = (rate > low) & (rate <= high)
    return keep.repeat_interleave(group_size)


class VerifierGRPOTrainer(GRPOTrainer):
    """GRPOTrainer plus DAPO-style dynamic sampling as a group filter (see the module doc)."""

    def __init__(self, *args: Any, dynamic_sampling: bool = True, pass_rate_low: float = 0.0,
                 pass_rate_high: float = 0.75, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dynamic_sampling = dynamic_sampling
        self.pass_rate_low = pass_rate_low
        self.pass_rate_high = pass_rate_high
        flags = [bool(getattr(f, "is_pass_reward", False)) for f in self.reward_funcs]
        self._pass_index = flags.index(True) if any(flags) else 0
        self._last_rewards_per_func: torch.Tensor | None = None
        self.kept_history: list[float] = []

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards  # gathered over processes, in group order
        return rewards

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if not self.dynamic_sampling or not self.model.training or self._last_rewards_per_func is None:
            return out
        passed = self._last_rewards_per_func[:, self._pass_index] > 0.5
        keep = group_keep_mask(passed, self.num_generations, self.pass_rate_low, self.pass_rate_high)
        n_local = out["completion_mask"].size(0)
        start = self.accelerator.process_index * n_local
        local = keep[start : start + n_local].to(out["completion_mask"].device)
        out["completion_mask"] = out["completion_mask"] * local.unsqueeze(1).to(out["completion_mask"].dtype)
        out["advantages"] = out["advantages"] * local.to(out["advantages"].dtype)
        loss_mask = out["completion_mask"]
        if "tool_mask" in out:
            loss_mask = loss_mask * out["tool_mask"]
        out["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        kept = keep.float().mean().item()
        self.kept_history.append(kept)
        self._metrics["train"]["dynamic_sampling/kept_fraction"].append(kept)
        return out


@dataclass
class RLResult:
    path: str
    checkpoint_id: int | None
    metrics: dict[str, Any]
    run: str


def build_rl_trainer(
    cfg: RLConfig,
    dataset: Any,
    *,
    db: str | None = None,
    backend: Any = None,
    model: Any = None,
    tokenizer: Any = None,
    checkpoint_id: int | None = None,
) -> tuple[VerifierGRPOTrainer, VerifierReward]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(cfg.model)
    opts = {"pool_size": cfg.verifier_workers, **cfg.verifier_opts}
    reward = VerifierReward(
        backend, timeout=cfg.verify_timeout, backend_opts=opts, db=db,
        run=cfg.run or f"rl-{Path(cfg.output_dir).name}", model=str(cfg.model),
        checkpoint_id=checkpoint_id,
        sampling={"temperature": cfg.temperature, "top_p": cfg.top_p,
                  "max_tokens": cfg.max_completion_length, "n": cfg.num_generations},
        store=cfg.store_attempts,
    )
    funcs: list[Any] = [reward]
    if cfg.overlong_buffer:
        funcs.append(OverlongPenalty(cfg.max_completion_length, cfg.overlong_buffer,
                                     cfg.overlong_penalty_factor))
    trainer = VerifierGRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=cfg.to_trl(),
        train_dataset=load_rl_dataset(dataset),
        processing_class=tokenizer,
        dynamic_sampling=cfg.dynamic_sampling,
        pass_rate_low=cfg.pass_rate_low,
        pass_rate_high=cfg.pass_rate_high,
    )
    return trainer, reward


def train_rl(
    cfg: RLConfig,
    dataset: Any = None,
    *,
    db: str | None = None,
    backend: Any = None,
    register: bool = True,
) -> RLResult:
    """Run GRPO, save the policy (``save_pretrained``) and register it (stage ``rl``, parent:
    the start checkpoint). Rollouts and verdicts go to the DB as Attempts of the RL run."""
    from db.session import session_scope
    from prover.train.registry import ensure_checkpoint, register_in_db

    source = dataset if dataset is not None else cfg.data
    if source is None or (isinstance(source, (list, tuple)) and not source):
        raise ValueError("no RL prompts: pass a dataset or set `data` in the config")
    run = cfg.run or f"rl-{Path(cfg.output_dir).name}"
    start_id = None
    if register:
        with session_scope(db) as session:
            start_id = ensure_checkpoint(session, cfg.model)
    t0 = time.perf_counter()
    trainer, reward = build_rl_trainer(dataclasses.replace(cfg, run=run), source, db=db,
                                       backend=backend, checkpoint_id=start_id)
    try:
        out = trainer.train()
    finally:
        reward.close()
    trainer.save_model(cfg.output_dir)  # gathers ZeRO-3 / FSDP shards; writes on the main process
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(cfg.output_dir)
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    metrics = {
        "train_loss": float(out.training_loss),
        "global_step": int(trainer.state.global_step),
        "mean_reward": float(sum(rewards) / len(rewards)) if rewards else None,
        "kept_fraction": (sum(trainer.kept_history) / len(trainer.kept_history))
        if trainer.kept_history else None,
        "verify_calls": reward.verify_calls,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    ckpt_id = None
    if register:
        ckpt_id = register_in_db(
            db, cfg.output_dir, stage="rl", base_model=cfg.base_model or cfg.model,
            parents=[start_id] if start_id is not None else [cfg.model], run=run, run_kind="rl",
            data={"files": [str(p) for p in cfg.data] if dataset is None else None,
                  "prompts": len(trainer.train_dataset), "config": cfg.to_dict()},
            metrics=metrics,
        )
    return RLResult(str(Path(cfg.output_dir).resolve()), ckpt_id, metrics, run)
