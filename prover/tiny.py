"""A tiny causal LM built locally (no downloads), for tests and CPU demos.

:func:`build_tiny_model` trains a byte-level BPE tokenizer on a small corpus, builds a
2-layer Llama from a config with a fixed seed, optionally fits it for a few steps on the corpus
(so that samples look vaguely like Lean/Coq), sets a chat template and saves model and
tokenizer with ``save_pretrained``: the result loads through the same ``from_pretrained`` path
as a real checkpoint. The caller passes the corpus (e.g. miniF2F statements of the ITP); the
function never reads data files itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

EOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# ChatML-style template: every message framed by the start/end markers, then an open
# assistant turn when a generation prompt is requested.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LEAN_WORDS = (
    "theorem lemma := by intro intros omega norm_num linarith nlinarith positivity simp decide "
    "aesop ring_nf field_simp ring nlinarith [sq_nonneg] have obtain rcases constructor exact "
    "apply rw simp_all <;> first | all_goals try import Mathlib open Real Nat set_option "
    "ℝ ℕ ℤ ℚ ℂ ∀ ∃ → ↔ ∧ ∨ ¬ ≤ ≥ ≠ √ ∑ ∏ Finset.Icc"
)
COQ_WORDS = (
    "Theorem Lemma Proof. Qed. Require Import Lia Lra Psatz ZArith Reals Field Arith. intros. "
    "lia. nia. lra. nra. ring. field. auto. tauto. reflexivity. easy. intuition. congruence. "
    "psatz subst simpl in * repeat split solve first [ ] forall exists nat Z R %Z %R"
)
DEFAULT_CORPUS = (
    (
        "Complete the following Lean 4 code:\n\n```lean4\nimport Mathlib\n\ntheorem t (x : ℝ) "
        "(h : 2 * x = 4) : x = 2 := by\n  linarith\n```"
    ),
    (
        "Complete the following Coq proof:\n\n```coq\nRequire Import Lia.\n\nTheorem t : forall n : "
        "nat, n + 0 = n.\nProof.\n  intros; lia.\nQed.\n```"
    ),
    LEAN_WORDS,
    COQ_WORDS,
)


def build_tiny_model(
    out_dir: str | Path,
    *,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 4096,
    train_steps: int = 0,
    train_seq_len: int = 64,
) -> Path:
    """Build and save a tiny Llama + BPE tokenizer into ``out_dir``; returns the path.

    ``corpus``: texts for the tokenizer (and for ``train_steps`` of LM fitting); the built-in
    Lean/Coq tactic words and two example snippets are always added. ``train_steps=0``
    (default) leaves the model at its seeded random initialization (a few seconds in all).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = [t for t in (corpus or ()) if t] + list(DEFAULT_CORPUS)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS,
        pad_token=PAD,
        bos_token=None,
        additional_special_tokens=[IM_START, IM_END],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        if train_steps > 0:
            _fit(model, tok, texts, steps=train_steps, seq_len=train_seq_len)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _fit(model, tok, texts: list[str], *, steps: int, seq_len: int) -> None:
    """A few AdamW steps of next-token prediction on the concatenated corpus."""
    import torch

    ids: list[int] = []
    for t in texts:
        ids += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    data = torch.tensor(ids, dtype=torch.long)
    if len(data) <= seq_len + 1:
        data = data.repeat((seq_len + 2) // max(len(data), 1) + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    batch = 8
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,))
        x = torch.stack([data[s : s + seq_len] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def main(argv: list[str] | None = None) -> None:
    """``python -m prover.tiny OUT_DIR [--corpus FILE.jsonl ...] [--train-steps N]``: the corpus
    is the ``formal_statement`` (or ``--field``) of each JSON line of the given files."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m prover.tiny", description=main.__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--corpus", nargs="*", default=[], help="JSONL files")
    ap.add_argument("--field", default="formal_statement")
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument("--train-steps", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    texts: list[str] = []
    for path in args.corpus:
        with open(path, encoding="utf-8") as f:
            texts += [json.loads(line).get(args.field, "") for line in f if line.strip()]
    out = build_tiny_model(
        args.out_dir,
        corpus=texts,
        vocab_size=args.vocab_size,
        seed=args.seed,
        train_steps=args.train_steps,
    )
    print(out)


if __name__ == "__main__":
    main()
