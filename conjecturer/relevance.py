"""Relevance re-weighting (STP): conjectures close to still-unsolved targets count more.

Embeddings are the current model's last hidden states, mean-pooled over the non-padding
tokens (``transformers.AutoModel`` from the checkpoint path; for a causal-LM checkpoint this
loads the base model without the LM head). Similarity is cosine. Each target gives
``per_target`` weight to each of its ``top_k`` nearest conjectures; a conjecture's weight is
the sum, capped at ``cap`` (4). Conjectures no target picked get weight 0 and are dropped.
With no targets at all (everything solved) every conjecture keeps weight 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from conjecturer.filters import FilterResult

T = TypeVar("T")

Embedder = Callable[[Sequence[str]], np.ndarray]


def embed_texts(
    model_path: str,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int = 512,
    device: str = "cpu",
    model: Any = None,
    tokenizer: Any = None,
) -> np.ndarray:
    """Mean-pooled last hidden states, one row per text (float32, shape (n, hidden))."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is None:
        model = AutoModel.from_pretrained(model_path).to(device)
    model.eval()
    rows: list[np.ndarray] = []
    with torch.no_grad():
        for b in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[b : b + batch_size]), return_tensors="pt", padding=True,
                            truncation=True, max_length=max_length).to(device)
            hidden = model(**enc).last_hidden_state  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            rows.append(pooled.float().cpu().numpy())
    if not rows:
        hidden_size = getattr(getattr(model, "config", None), "hidden_size", 0)
        return np.zeros((0, hidden_size), dtype=np.float32)
    return np.concatenate(rows, axis=0)


def hf_embedder(model_path: str, **kw: Any) -> Embedder:
    """An embedder that loads the checkpoint once and reuses it."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    device = kw.get("device", "cpu")
    model = AutoModel.from_pretrained(model_path).to(device)

    def embed(texts: Sequence[str]) -> np.ndarray:
        return embed_texts(model_path, texts, model=model, tokenizer=tok, **kw)

    return embed


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n == 0, 1.0, n)


def spread_weights(
    conjectures: np.ndarray,
    targets: np.ndarray,
    *,
    top_k: int = 4,
    per_target: float = 1.0,
    cap: float = 4.0,
) -> np.ndarray:
    """Weight per conjecture (rows of ``conjectures``): each target row adds ``per_target`` to
    its ``top_k`` most cosine-similar conjectures (ties: lower index), capped at ``cap``."""
    n = len(conjectures)
    w = np.zeros(n, dtype=np.float64)
    if n == 0:
        return w
    if len(targets) == 0:
        return np.ones(n, dtype=np.float64)
    sim = _unit(targets) @ _unit(conjectures).T  # (T, C)
    k = min(top_k, n)
    for row in sim:
        # stable sort on -sim: equal similarities keep index order
        for j in np.argsort(-row, kind="stable")[:k]:
            w[j] += per_target
    return np.minimum(w, cap)


def reweight(
    items: Sequence[T],
    conj_vecs: np.ndarray,
    target_vecs: np.ndarray,
    *,
    top_k: int = 4,
    per_target: float = 1.0,
    cap: float = 4.0,
) -> tuple[FilterResult[T], list[float]]:
    """(kept/rejected, weights of the kept items in order)."""
    w = spread_weights(conj_vecs, target_vecs, top_k=top_k, per_target=per_target, cap=cap)
    res: FilterResult[T] = FilterResult()
    weights: list[float] = []
    for it, wi in zip(items, w):
        if wi > 0:
            res.kept.append(it)
            weights.append(float(wi))
        else:
            res.rejected.append((it, "irrelevant"))
    return res, weights
