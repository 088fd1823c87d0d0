"""Checkpoint averaging (Goedel-Prover-V2): θ = (1 − α)·θ_base + α·θ_tuned.

Late SFT/RL raise pass@1 but narrow the output distribution; interpolating back toward the
base restores diversity (pass@32). Goedel-V2 swept α over 0.6–0.9.

Streaming: weights are read tensor by tensor with ``safetensors.safe_open`` and written shard by
shard, following the fine-tuned checkpoint's sharding (``model.safetensors`` or
``model.safetensors.index.json`` + shards), so peak memory is about one output shard, never two
full models. Everything is checked before anything is written: same architecture
(``config.json``: ``architectures``, ``model_type`` and the size fields), same tensor names,
same shapes; a mismatch raises :class:`AverageError` naming the tensor. Non-weight files
(config, generation config, tokenizer, chat template) are copied from the fine-tuned checkpoint.

α = 0 and α = 1 return the base and the fine-tuned tensors bit for bit (copied, not computed).
Other α are computed in float32 and cast back to the fine-tuned tensor's dtype. Non-floating
tensors (integer buffers) are taken from the fine-tuned checkpoint and must be equal in both.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# config fields that must agree for two checkpoints to be averaged
ARCH_FIELDS = (
    "architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "intermediate_size", "vocab_size", "tie_word_embeddings",
)
# never copied from the fine-tuned directory
SKIP_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"}


class AverageError(ValueError):
    """The two checkpoints cannot be averaged (the message says why, naming the tensor)."""


@dataclass(frozen=True)
class WeightLayout:
    """Where each tensor lives: ``name -> shard file name`` (one file when not sharded)."""

    directory: Path
    weight_map: dict[str, str]
    sharded: bool
    index_metadata: dict[str, Any]

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))


def weight_layout(directory: str | Path) -> WeightLayout:
    d = Path(directory)
    if (d / INDEX).is_file():
        idx = json.loads((d / INDEX).read_text())
        return WeightLayout(d, dict(idx["weight_map"]), True, dict(idx.get("metadata") or {}))
    if (d / SINGLE).is_file():
        from safetensors import safe_open

        with safe_open(str(d / SINGLE), framework="pt") as f:
            names = list(f.keys())
        return WeightLayout(d, {n: SINGLE for n in names}, False, {})
    if any(d.glob("*.bin")):
        raise AverageError(f"{d}: only safetensors checkpoints are supported (found .bin weights)")
    raise AverageError(f"{d}: no {SINGLE} or {INDEX}")


def _config(d: Path) -> dict[str, Any]:
    p = d / "config.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _shape_dtype(layout: WeightLayout, name: str, handles: dict[str, Any]) -> tuple[list[int], str]:
    f = handles[layout.weight_map[name]]
    sl = f.get_slice(name)
    return list(sl.get_shape()), str(sl.get_dtype())


def check_compatible(base: WeightLayout, tuned: WeightLayout) -> None:
    """Raise :class:`AverageError` unless architectures, tensor names and shapes agree."""
    from safetensors import safe_open

    cb, ct = _config(base.directory), _config(tuned.directory)
    for key in ARCH_FIELDS:
        if key in cb and key in ct and cb[key] != ct[key]:
            raise AverageError(
                f"architecture mismatch: config.json {key!r} is {cb[key]!r} in {base.directory} "
                f"but {ct[key]!r} in {tuned.directory}"
            )
    nb, nt = set(base.weight_map), set(tuned.weight_map)
    if nb != nt:
        only_b, only_t = sorted(nb - nt), sorted(nt - nb)
        first = (only_b or only_t)[0]
        where = "only in the base" if only_b else "only in the fine-tuned checkpoint"
        raise AverageError(
            f"tensor names differ: {first!r} is {where} "
            f"({len(only_b)} tensor(s) only in the base, {len(only_t)} only in the fine-tuned)"
        )
    hb = {s: safe_open(str(base.directory / s), framework="pt") for s in base.shards}
    ht = {s: safe_open(str(tuned.directory / s), framework="pt") for s in tuned.shards}
    try:
        for name in sorted(nt):
            sb, _ = _shape_dtype(base, name, hb)
            st, _ = _shape_dtype(tuned, name, ht)
            if sb != st:
                raise AverageError(
                    f"shape mismatch for tensor {name!r}: {tuple(sb)} in the base, "
                    f"{tuple(st)} in the fine-tuned checkpoint"
                )
    finally:
        for h in (*hb.values(), *ht.values()):
            _close(h)


def _close(handle: Any) -> None:
    exit_ = getattr(handle, "__exit__", None)
    if exit_ is not None:
        try:
            exit_(None, None, None)
        except Exception:  # noqa: BLE001, S110 - best-effort close
            pass


def _mix(b, t, alpha: float, name: str):
    import torch

    if not t.is_floating_point():
        if not torch.equal(b, t):
            raise AverageError(f"non-floating tensor {name!r} differs between the checkpoints")
        return t
    if alpha == 1.0:
        return t
    if alpha == 0.0:
        return b.to(t.dtype) if b.dtype != t.dtype else b
    out = b.to(torch.float32).mul_(1.0 - alpha).add_(t.to(torch.float32), alpha=alpha)
    return out.to(t.dtype)


def average_checkpoints(
    base: str | Path,
    tuned: str | Path,
    out: str | Path,
    alpha: float,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write θ = (1 − α)·θ_base + α·θ_tuned into ``out``; returns ``out``.

    ``progress(done_shards, total_shards)`` is called after each shard is written."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    if not 0.0 <= float(alpha) <= 1.0:
        raise AverageError(f"alpha must be in [0, 1], got {alpha}")
    alpha = float(alpha)
    base_l, tuned_l = weight_layout(base), weight_layout(tuned)
    check_compatible(base_l, tuned_l)
    out_d = Path(out)
    if out_d.exists() and any(out_d.iterdir()) and not overwrite:
        raise AverageError(f"{out_d} exists and is not empty (pass overwrite=True)")
    if out_d.resolve() in (base_l.directory.resolve(), tuned_l.directory.resolve()):
        raise AverageError("the output directory must differ from both inputs")
    out_d.mkdir(parents=True, exist_ok=True)

    base_handles: dict[str, Any] = {}
    total_size = 0
    shards = tuned_l.shards
    try:
        for k, shard in enumerate(shards, 1):
            names = [n for n, s in tuned_l.weight_map.items() if s == shard]
            tensors: dict[str, torch.Tensor] = {}
            with safe_open(str(tuned_l.directory / shard), framework="pt") as ft:
                meta = ft.metadata() or {}
                for name in names:
                    bshard = base_l.weight_map[name]
                    if bshard not in base_handles:
                        base_handles[bshard] = safe_open(str(base_l.directory / bshard), framework="pt")
                    t = ft.get_tensor(name)
                    b = base_handles[bshard].get_tensor(name)
                    m = _mix(b, t, alpha, name)
                    tensors[name] = m.contiguous()
                    total_size += m.numel() * m.element_size()
                    del b, t
            save_file(tensors, str(out_d / shard), metadata={**meta, "format": meta.get("format", "pt")})
            del tensors
            if progress:
                progress(k, len(shards))
    finally:
        for h in base_handles.values():
            _close(h)
    if tuned_l.sharded:
        index = {
            "metadata": {**tuned_l.index_metadata, "total_size": total_size},
            "weight_map": dict(sorted(tuned_l.weight_map.items())),
        }
        (out_d / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    for f in tuned_l.directory.iterdir():
        if not f.is_file() or f.name in SKIP_FILES or f.name == INDEX or f.suffix == ".safetensors":
            continue
        shutil.copy2(f, out_d / f.name)
    return out_d


def average_and_register(
    base: str | Path,
    tuned: str | Path,
    out: str | Path,
    alpha: float,
    *,
    db: str | None = None,
    run: str | None = None,
    round_index: int | None = None,
    overwrite: bool = False,
) -> tuple[Path, int]:
    """:func:`average_checkpoints`, then register the result (stage ``averaged``, parents:
    the base and the fine-tuned checkpoints). Returns (path, checkpoint id)."""
    from db.session import session_scope
    from prover.train.registry import find_checkpoint, register_in_db

    path = average_checkpoints(base, tuned, out, alpha, overwrite=overwrite)
    with session_scope(db) as session:
        tuned_row = find_checkpoint(session, tuned)
    root = tuned_row.base_model if tuned_row and tuned_row.base_model else str(base)
    ckpt = register_in_db(
        db, path, stage="averaged", base_model=root, parents=[base, tuned], run=run,
        run_kind="selfplay", round_index=round_index,
        data={"alpha": alpha, "base": str(base), "tuned": str(tuned),
              "formula": "(1-alpha)*base + alpha*tuned"},
        metrics={},
    )
    return path, ckpt
