"""Weighted SFT: expert iteration and STP's "RL" step.

Data: rows of ``(prompt, completion, weight)`` (a :class:`datasets.Dataset` or JSON-lines
files). The prompt is the exact text the prover sees at inference (a completion-style prompt
such as :func:`prover.prompts.build_coq`'s); the completion is what the model should write
after it (for a completion format: the proof and the closing fence). Chat rows are accepted
too: ``prompt`` and ``completion`` as lists of messages, as TRL's conversational
prompt-completion format.

Loss: token cross-entropy on completion tokens only, each token scaled by its example's weight,
summed and divided by the number of completion tokens (the token-mean TRL uses for plain SFT).
So a zero-weight example contributes nothing (its gradient is exactly zero) and doubling a
weight doubles that example's gradient contribution.

Weight normalization: weights are divided by their **dataset** mean once, before training, so
they average 1. Not by the batch mean, because with batch normalization

- the weight an example effectively gets depends on which batch it lands in (a low-weight proof
  among other low-weight proofs would be scaled up to full strength: the relative weighting STP
  computes would be partly undone), and it changes with the batch size, gradient accumulation
  and the number of GPUs;
- a batch holding only zero-weight examples would be 0/0.

A dataset-mean weight of 1 keeps the step size of the recipe (lr 5e-5) meaning what it means for
unweighted SFT. ``weight_normalization="none"`` uses the weights as given.

Modes (``init``): ``previous`` continues from the previous round's checkpoint on this round's
data (STP); ``base`` re-trains from the base model on every round's data (the expert-iteration
baseline, and STP's final re-training). The data files to use are the caller's choice; the
config records which and the checkpoint row records them as provenance.

What TRL lacks, and is added here: SFTTrainer has no per-example loss weights. The subclass
keeps the ``weight`` column through dataset preparation (it is added to the signature columns),
the collator spreads it over the example's tokens (so padding-free batches work too), and
``compute_loss`` scales the per-token log-likelihoods TRL's fused LM head returns. Packing is
refused: packed rows mix examples and TRL's packer drops extra columns.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from prover.recipe import Recipe

INIT_MODES = ("previous", "base")
NORMALIZATIONS = ("dataset-mean", "none")


@dataclass
class WeightedSFTConfig(Recipe):
    """A weighted-SFT recipe. Optimizer defaults follow STP: AdamW β=(0.9, 0.95), ε=1e-5,
    no weight decay, lr 5e-5, one epoch, constant lr after warmup."""

    output_dir: str
    model: str | None = None  # the checkpoint to continue from (init="previous")
    base_model: str | None = None  # the base to re-train from (init="base"); provenance otherwise
    init: str = "previous"  # "previous" (STP) | "base" (expert-iteration baseline)
    data: list[str] = field(default_factory=list)  # JSON-lines files with prompt/completion/weight
    weight_normalization: str = "dataset-mean"  # "dataset-mean" | "none"
    learning_rate: float = 5e-5
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "constant_with_warmup"
    warmup_steps: float = 0.0  # steps, or a ratio of the total when in [0, 1)
    max_length: int | None = 2048
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0
    logging_steps: int = 10
    save_strategy: str = "no"  # intermediate Trainer checkpoints; the final model is always saved
    report_to: str = "none"
    # registry / provenance
    stage: str = "expert-iteration"  # "sft" | "expert-iteration"
    run: str | None = None
    round_index: int | None = None
    # passed to trl.SFTConfig as is (e.g. {"deepspeed": ..., "torch_compile": true})
    trl_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {self.init!r}")
        if self.weight_normalization not in NORMALIZATIONS:
            raise ValueError(f"weight_normalization must be one of {NORMALIZATIONS}")
        if isinstance(self.data, str):
            self.data = [self.data]
        if self.init == "base" and not self.base_model:
            raise ValueError("init='base' re-trains from base_model: set base_model")
        if self.init == "previous" and not (self.model or self.base_model):
            raise ValueError("init='previous' continues from model: set model")

    @property
    def start_model(self) -> str:
        """The checkpoint training starts from."""
        if self.init == "base":
            return str(self.base_model)
        return str(self.model or self.base_model)

    def to_trl(self):
        from trl import SFTConfig

        kw: dict[str, Any] = dict(
            output_dir=self.output_dir,
            learning_rate=self.learning_rate,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            adam_beta1=self.adam_beta1,
            adam_beta2=self.adam_beta2,
            adam_epsilon=self.adam_epsilon,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            lr_scheduler_type=self.lr_scheduler_type,
            warmup_steps=self.warmup_steps,
            max_length=self.max_length,
            bf16=self.bf16,
            **checkpointing_kwargs(SFTConfig, self.gradient_checkpointing),
            seed=self.seed,
            data_seed=self.seed,
            logging_steps=self.logging_steps,
            save_strategy=self.save_strategy,
            report_to=self.report_to,
            completion_only_loss=True,
            packing=False,
            optim="adamw_torch",
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        kw.update(self.trl_args)
        return SFTConfig(**kw)


def checkpointing_kwargs(config_cls: type, enabled: bool) -> dict[str, Any]:
    """Activation checkpointing on/off under the name this transformers version uses
    (``activation_checkpointing`` since v5; ``gradient_checkpointing`` before)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    if "activation_checkpointing" in names:
        return {"activation_checkpointing": bool(enabled), "gradient_checkpointing": None}
    return {"gradient_checkpointing": bool(enabled)}


# ----------------------------------------------------------------------------- data


def read_jsonl(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{p}:{n}: not JSON: {exc}") from None
    return rows


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return path


def load_weighted_dataset(
    source: Any, *, normalization: str = "dataset-mean"
):
    """A :class:`datasets.Dataset` with ``prompt``, ``completion`` and a float ``weight``
    (default 1.0) from a Dataset, a list of dicts, or JSON-lines paths. Weights must be finite
    and >= 0; with ``dataset-mean`` they are divided by their mean (all-zero stays zero)."""
    from datasets import Dataset

    if isinstance(source, (str, Path)):
        source = [source]
    if isinstance(source, Dataset):
        ds = source
    elif isinstance(source, (list, tuple)) and (not source or isinstance(source[0], dict)):
        ds = Dataset.from_list(list(source))
    else:
        ds = Dataset.from_list(read_jsonl(source))
    if len(ds) == 0:
        raise ValueError("the training set is empty")
    missing = [c for c in ("prompt", "completion") if c not in ds.column_names]
    if missing:
        raise ValueError(f"the training set lacks column(s) {missing}; need prompt, completion[, weight]")
    weights = [1.0] * len(ds) if "weight" not in ds.column_names else [
        1.0 if w is None else float(w) for w in ds["weight"]
    ]
    bad = [i for i, w in enumerate(weights) if not math.isfinite(w) or w < 0]
    if bad:
        raise ValueError(f"weights must be finite and >= 0; row {bad[0]} has {weights[bad[0]]!r}")
    if normalization == "dataset-mean":
        mean = sum(weights) / len(weights)
        if mean > 0:
            weights = [w / mean for w in weights]
    elif normalization != "none":
        raise ValueError(f"unknown weight normalization {normalization!r}")
    keep = [c for c in ds.column_names if c in ("prompt", "completion")]
    ds = ds.select_columns(keep).add_column("weight", weights)
    return ds


# ----------------------------------------------------------------------------- trainer


class WeightedDataCollator(DataCollatorForLanguageModeling):
    """TRL's language-modeling collator plus a ``weight`` tensor shaped like ``labels`` (each
    example's weight repeated over its tokens; 0 on padding). Works padding-free too."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        per_token = [
            torch.full((len(ex["input_ids"]),), float(ex.get("weight", 1.0))) for ex in examples
        ]
        if self.padding_free:
            per_token = [torch.cat(per_token)]
        w = torch.zeros(out["labels"].shape, dtype=torch.float32)
        for i, t in enumerate(per_token):
            w[i, : len(t)] = t
        out["weight"] = w
        return out


class WeightedSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss scales each example's completion-token losses by its ``weight``
    (see the module docstring for the normalization)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        targs = kwargs.get("args")
        if targs is not None and (targs.packing or getattr(targs, "eval_packing", False)):
            raise ValueError("weighted SFT does not support packing (weights are per example)")
        if kwargs.get("data_collator") is None:
            tok = kwargs.get("processing_class")
            if tok is None:
                raise ValueError("WeightedSFTTrainer needs processing_class (the tokenizer)")
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            kwargs["data_collator"] = WeightedDataCollator(
                pad_token_id=tok.pad_token_id,
                padding_free=bool(targs is not None and targs.padding_free),
                pad_to_multiple_of=getattr(targs, "pad_to_multiple_of", None),
            )
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and "weight" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "weight"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weight = inputs.pop("weight", None)
        if weight is None or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if "shift_labels" in inputs:
            raise ValueError("weighted SFT does not support pre-shifted labels (context parallelism)")
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        # the fused head scores position t against label t+1: align the weights the same way
        tok_w = weight[:, 1:].to(outputs.log_probs.device, outputs.log_probs.dtype)
        per_token_loss = -outputs.log_probs * tok_w  # zero on ignored positions
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token_loss.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # as in Trainer: num_items_in_batch counts every rank's tokens and DDP averages grads
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        with torch.no_grad():
            mask = outputs.label_mask
            n_valid = self.accelerator.gather_for_metrics(mask.sum()).sum()
            if outputs.is_top1 is not None:
                correct = self.accelerator.gather_for_metrics(outputs.is_top1.sum()).sum()
                self._metrics[mode]["mean_token_accuracy"].append(
                    (correct / n_valid).item() if n_valid > 0 else 0.0
                )
            nll = self.accelerator.gather_for_metrics((-outputs.log_probs).detach().sum()).sum()
            self._metrics[mode]["unweighted_nll"].append((nll / n_valid).item() if n_valid > 0 else 0.0)
            if mode == "train" and "attention_mask" in inputs:
                self._total_train_tokens += int(
                    self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
                )
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss


def build_trainer(cfg: WeightedSFTConfig, dataset: Any, *, model: Any = None, tokenizer: Any = None):
    """A ready :class:`WeightedSFTTrainer` (model and tokenizer loaded from
    ``cfg.start_model`` unless given)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = cfg.start_model
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(start)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(start)
    ds = load_weighted_dataset(dataset, normalization=cfg.weight_normalization)
    return WeightedSFTTrainer(model=model, args=cfg.to_trl(), train_dataset=ds, processing_class=tokenizer)


@dataclass
class TrainResult:
    path: str
    checkpoint_id: int | None
    metrics: dict[str, Any]


def train_sft(
    cfg: WeightedSFTConfig,
    dataset: Any = None,
    *,
    db: str | None = None,
    register: bool = True,
    parents: Sequence[int | str] | None = None,
    data_info: dict[str, Any] | None = None,
) -> TrainResult:
    """Train, save (``save_pretrained`` of model and tokenizer into ``cfg.output_dir``) and
    register the checkpoint (stage ``cfg.stage``; parent: the start checkpoint, unless
    ``parents`` says otherwise). ``dataset``: rows, a Dataset or paths; default ``cfg.data``."""
    source = dataset if dataset is not None else cfg.data
    if source is None or (isinstance(source, (list, tuple)) and not source):
        raise ValueError("no training data: pass a dataset or set `data` in the config")
    t0 = time.perf_counter()
    trainer = build_trainer(cfg, source)
    n_examples = len(trainer.train_dataset)
    out = trainer.train()
    trainer.save_model(cfg.output_dir)  # gathers ZeRO-3 / FSDP shards; writes on the main process
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(cfg.output_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "train_loss": float(out.training_loss),
        "final_loss": float(losses[-1]) if losses else float(out.training_loss),
        "global_step": int(trainer.state.global_step),
        "examples": n_examples,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    ckpt_id = None
    if register:
        from prover.train.registry import register_in_db

        provenance = {
            "init": cfg.init,
            "files": [str(p) for p in cfg.data] if dataset is None else None,
            "examples": n_examples,
            "weight_normalization": cfg.weight_normalization,
            "config": cfg.to_dict(),
            **(data_info or {}),
        }
        ckpt_id = register_in_db(
            db,
            cfg.output_dir,
            stage=cfg.stage,
            base_model=cfg.base_model or cfg.start_model,
            parents=list(parents) if parents is not None else [cfg.start_model],
            run=cfg.run,
            run_kind="selfplay",
            round_index=cfg.round_index,
            data=provenance,
            metrics=metrics,
        )
    return TrainResult(str(Path(cfg.output_dir).resolve()), ckpt_id, metrics)
