"""Training: weighted SFT, expert iteration with real Coq rewards, GRPO with the verifier
reward, checkpoint averaging and the registry. CPU, tiny models built from a config."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from prover.tiny import build_tiny_model

COQ_HEADER = "Require Import Arith Lia Reals Lra.\n"


def _silence() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()


_silence()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=0)


def _sft_cfg(tmp_path, model, **kw):
    from prover.train.sft import WeightedSFTConfig

    base = {"output_dir": str(tmp_path / "out"), "model": str(model), "max_steps": 1,
            "per_device_train_batch_size": 2, "logging_steps": 1, "max_length": 128}
    base.update(kw)
    return WeightedSFTConfig(**base)


ROWS = [
    {"prompt": "Complete the following Coq proof:\n\n```coq\nTheorem a : 1 = 1.\n",
     "completion": "Proof.\n  reflexivity.\nQed.\n```"},
    {"prompt": "Complete the following Coq proof:\n\n```coq\nTheorem b : forall n : nat, n + 0 = n.\n",
     "completion": "Proof.\n  intros; lia.\nQed.\n```"},
]


# ----------------------------------------------------------------------------- weighted SFT


def test_dataset_weights_are_normalized_by_the_dataset_mean():
    from prover.train.sft import load_weighted_dataset

    ds = load_weighted_dataset([{**ROWS[0], "weight": 1.0}, {**ROWS[1], "weight": 3.0}])
    assert ds["weight"] == [0.5, 1.5]
    assert load_weighted_dataset(ROWS)["weight"] == [1.0, 1.0]  # no weight column: 1
    raw = load_weighted_dataset([{**ROWS[0], "weight": 2.0}], normalization="none")
    assert raw["weight"] == [2.0]
    zero = load_weighted_dataset([{**r, "weight": 0.0} for r in ROWS])
    assert zero["weight"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="finite and >= 0"):
        load_weighted_dataset([{**ROWS[0], "weight": -1.0}])
    with pytest.raises(ValueError, match="completion"):
        load_weighted_dataset([{"prompt": "x"}])


def test_zero_weight_examples_do_not_move_the_model(tiny, tmp_path):
    from prover.train.sft import build_trainer

    cfg = _sft_cfg(tmp_path, tiny, learning_rate=1e-2)
    trainer = build_trainer(cfg, [{**r, "weight": 0.0} for r in ROWS])
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 1
    for k, v in trainer.model.named_parameters():
        assert torch.equal(before[k], v), k
    # the same step with weight 1 does move it
    trainer = build_trainer(cfg, [{**r, "weight": 1.0} for r in ROWS])
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.named_parameters())


def test_doubling_a_weight_doubles_its_gradient(tiny, tmp_path):
    from prover.train.sft import build_trainer

    cfg = _sft_cfg(tmp_path, tiny, weight_normalization="none")
    trainer = build_trainer(cfg, ROWS)
    model = trainer.model
    model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["weight"].shape == batch["labels"].shape

    def grads(w0: float, w1: float) -> torch.Tensor:
        b = {k: v.clone() for k, v in batch.items()}
        b["weight"][0] *= w0
        b["weight"][1] *= w1
        model.zero_grad()
        trainer.compute_loss(model, b).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    g10, g20, g01, g11 = grads(1, 0), grads(2, 0), grads(0, 1), grads(1, 1)
    assert g10.abs().sum() > 0
    torch.testing.assert_close(g20, 2 * g10, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g11, g10 + g01, rtol=1e-5, atol=1e-7)
    assert torch.count_nonzero(grads(0, 0)) == 0


def test_sft_config_yaml_and_modes(tmp_path):
    from prover.train.sft import WeightedSFTConfig

    root = Path(__file__).resolve().parents[1]
    cfg = WeightedSFTConfig.from_yaml(root / "configs" / "sft.yaml", model="m", output_dir=str(tmp_path),
                                      bf16=False)
    assert (cfg.learning_rate, cfg.adam_beta2, cfg.adam_epsilon, cfg.weight_decay) == (5e-5, 0.95, 1e-5, 0.0)
    trl_cfg = cfg.to_trl()
    assert trl_cfg.completion_only_loss is True and trl_cfg.adam_beta1 == 0.9
    assert trl_cfg.gradient_checkpointing is True  # the recipe turns it on
    from prover.train.rl import RLConfig

    rl = RLConfig.from_yaml(root / "configs" / "grpo.yaml", bf16=False, use_vllm=False)
    g = rl.to_trl()
    assert (g.beta, g.scale_rewards, g.loss_type, g.epsilon_high) == (0.0, "none", "dapo", 0.28)
    assert rl.overlong_buffer == 4096 and (rl.pass_rate_low, rl.pass_rate_high) == (0.0, 0.75)
    assert WeightedSFTConfig(output_dir="o", model="prev", base_model="b").start_model == "prev"
    assert WeightedSFTConfig(output_dir="o", model="prev", base_model="b", init="base").start_model == "b"
    with pytest.raises(ValueError, match="base_model"):
        WeightedSFTConfig(output_dir="o", model="prev", init="base")
    with pytest.raises(ValueError, match="unknown"):
        WeightedSFTConfig.from_dict({"output_dir": "o", "model": "m", "lr": 1})


# ----------------------------------------------------------------------------- expert iteration (real Coq)


def _toy_statements(indices) -> list[str]:
    """Nat goals that `lia` closes but `lra`/`ring` do not, and real goals that `lra`/`ring`
    close but `lia` does not: the model must pick the tactic from the statement."""
    out = []
    for i in indices:
        out.append(f"Theorem t_{i} : forall n : nat, n < n + {i} + 1.")
        out.append(f"Theorem r_{i} : forall x : R, (x * 1 + {i} = {i} + x)%R.")
    return out


@pytest.fixture(scope="module")
def coq():
    from verifier import get_backend

    backend = get_backend("coq")
    yield backend
    backend.close()


def _proved_fraction(backend, model_path, statements, prompts, n=2) -> float:
    from prover.generation import SamplingParams, make_generator
    from prover.prompts import get_format
    from verifier.types import ProofTask

    fmt = get_format("coq")
    gen = make_generator("hf", model=str(model_path))
    params = SamplingParams(n=n, temperature=0.5, top_p=1.0, max_tokens=24, seed=0, stop=fmt.stop)
    outs = gen.generate([prompts[s] for s in statements], params)
    tasks, total = [], 0
    for st, comps in zip(statements, outs):
        for c in comps:
            total += 1
            e = fmt.extract(COQ_HEADER, st, c.text)
            if e is not None:
                tasks.append(ProofTask(COQ_HEADER, st, e.proof, helpers=e.helpers))
    verdicts = backend.verify_batch(tasks, timeout=30) if tasks else []
    return sum(v.proved for v in verdicts) / total


@pytest.fixture(scope="module")
def expert_iteration(tmp_path_factory, coq):
    """Verify portfolio tactics on the train half, SFT a random tiny model on the verified
    proofs (weight 1 / #proofs of the statement, as STP), measure the held-out half."""
    from prover.generation.portfolio import COQ_TACTICS
    from prover.prompts import get_format
    from prover.train.sft import WeightedSFTConfig, train_sft, write_jsonl
    from verifier.types import ProofTask

    tmp = tmp_path_factory.mktemp("ei")
    fmt = get_format("coq")
    train, held = _toy_statements(range(1, 12, 2)), _toy_statements(range(2, 13, 2))
    prompts = {s: fmt.build(COQ_HEADER, s) for s in train + held}
    tactics = [t for t in COQ_TACTICS if t in ("lia", "lra", "ring")]
    cands = [(s, f"Proof.\n  intros; {t}.\nQed.") for s in train for t in tactics]
    verdicts = coq.verify_batch([ProofTask(COQ_HEADER, s, p) for s, p in cands], timeout=30)
    proved = [(s, p) for (s, p), v in zip(cands, verdicts) if v.proved]
    per_statement = Counter(s for s, _ in proved)
    rows = [{"prompt": prompts[s], "completion": p + "\n```", "weight": 1.0 / per_statement[s]}
            for s, p in proved]
    data = write_jsonl(rows, tmp / "round0.jsonl")

    corpus = [prompts[s] for s in train + held] + [r["completion"] for r in rows]
    base = build_tiny_model(tmp / "base", corpus=corpus, seed=0)
    before = _proved_fraction(coq, base, held, prompts)
    db = f"sqlite:///{tmp}/t.db"
    cfg = WeightedSFTConfig(
        output_dir=str(tmp / "ei0"), base_model=str(base), init="base", data=[str(data)],
        learning_rate=3e-3, num_train_epochs=20, per_device_train_batch_size=6,
        lr_scheduler_type="constant", max_length=256, logging_steps=5, run="toy", round_index=0,
    )
    result = train_sft(cfg, db=db)
    after = _proved_fraction(coq, result.path, held, prompts)
    return {"before": before, "after": after, "result": result, "db": db, "base": base,
            "rows": rows, "per_statement": per_statement, "prompts": prompts, "held": held,
            "tmp": tmp}


def test_expert_iteration_learns_to_prove_held_out_statements(expert_iteration):
    ei = expert_iteration
    # the portfolio found proofs with different tactics; reals have two (lra, ring)
    assert set(ei["per_statement"].values()) == {1, 2}
    assert ei["before"] <= 0.05
    assert ei["after"] >= ei["before"] + 0.4, (ei["before"], ei["after"])


def test_sft_checkpoint_is_registered(expert_iteration):
    from db.session import session_scope
    from prover.train.registry import find_checkpoint, lineage

    ei = expert_iteration
    res = ei["result"]
    assert res.metrics["final_loss"] < res.metrics["train_loss"]
    with session_scope(ei["db"]) as session:
        ck = find_checkpoint(session, res.path)
        assert ck.id == res.checkpoint_id and ck.stage == "expert-iteration"
        assert ck.base_model == str(Path(ei["base"]).resolve())
        assert ck.data["init"] == "base" and ck.data["examples"] == len(ei["rows"])
        assert ck.data["files"][0].endswith("round0.jsonl")
        assert ck.metrics["global_step"] > 0 and "final_loss" in ck.metrics
        chain = lineage(session, res.path)
        assert [c.stage for c in chain] == ["expert-iteration", "base"]


# ----------------------------------------------------------------------------- GRPO (real Coq)


def test_group_keep_mask_drops_unsolved_and_easy_groups():
    from prover.train.rl import group_keep_mask

    passed = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool)
    keep = group_keep_mask(passed, 4)
    assert keep.view(4, 4)[:, 0].tolist() == [False, True, True, False]  # 0, .25, .75, 1


def test_overlong_penalty():
    from prover.train.rewards import OverlongPenalty

    pen = OverlongPenalty(100, 20)
    assert pen([None] * 4, [""] * 4, completion_ids=[[0] * 80, [0] * 90, [0] * 100, [0] * 120]) == [
        0.0, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError):
        OverlongPenalty(100, 100)


def test_grpo_step_stores_rollouts_and_verdicts(expert_iteration, coq, tmp_path):
    from sqlalchemy import func, select
    from transformers import AutoTokenizer

    from db.models import Attempt, Checkpoint, Verdict
    from db.session import session_scope
    from prover.train.rl import RLConfig, correction_row, mix_rows, train_rl, whole_proof_row
    from verifier.types import ProofTask

    ei = expert_iteration
    policy = ei["result"].path
    tok = AutoTokenizer.from_pretrained(policy)
    held = ei["held"]
    whole = [whole_proof_row("coq", COQ_HEADER, s, tokenizer=tok) for s in held[:2]]
    # a first-round correction input built from a real failed attempt and its Coq errors
    wrong = "Proof.\n  intros; lra.\nQed."
    v = coq.verify_batch([ProofTask(COQ_HEADER, held[0], wrong)], timeout=30)[0]
    assert not v.proved and v.messages
    corr = [correction_row("coq", COQ_HEADER, held[0], wrong + "\n```", v.messages, tokenizer=tok)]
    assert "<|im_start|>assistant" in corr[0]["prompt"] and corr[0]["kind"] == "chat"
    rows = mix_rows(whole, corr, correction_fraction=0.5, size=2, seed=0)
    assert Counter(r["mode"] for r in rows) == {"whole-proof": 1, "correction": 1}

    cfg = RLConfig(
        model=policy, output_dir=str(tmp_path / "rl"), max_steps=1, per_device_train_batch_size=8,
        gradient_accumulation_steps=1, num_generations=4, max_completion_length=24,
        overlong_buffer=8, learning_rate=1e-4, temperature=1.0, logging_steps=1, run="rl-toy",
    )
    res = train_rl(cfg, rows, db=ei["db"], backend=coq)
    assert res.metrics["verify_calls"] == 1  # one verify_batch for the whole batch
    assert res.metrics["global_step"] == 1
    with session_scope(ei["db"]) as session:
        atts = session.scalars(select(Attempt).where(Attempt.key.like("rl/%"))).all()
        assert len(atts) == 8
        assert {a.mode.value for a in atts} == {"whole-proof", "correction"}
        assert all(a.completion is not None and a.run_id == atts[0].run_id for a in atts)
        n_verdicts = session.scalar(
            select(func.count()).select_from(Verdict).where(Verdict.attempt_id.in_([a.id for a in atts])))
        assert n_verdicts == 8
        statuses = [a.verdict.status.value for a in sorted(atts, key=lambda a: a.sample_index)]
        ck = session.get(Checkpoint, res.checkpoint_id)
        assert ck.stage.value == "rl" and len(ck.parent_ids) == 1
    # the dynamic-sampling filter saw the same pass rates the DB holds
    from prover.train.rl import group_keep_mask

    passed = torch.tensor([s == "proved" for s in statuses])
    assert res.metrics["kept_fraction"] == pytest.approx(group_keep_mask(passed, 4).float().mean().item())
    assert any(s == "proved" for s in statuses)


def test_verifier_reward_keys_are_idempotent(expert_iteration, coq):
    from sqlalchemy import select

    from db.models import Attempt
    from db.session import session_scope
    from prover.train.rewards import VerifierReward

    ei = expert_iteration
    st = ei["held"][0]

    class State:
        global_step = 7

    reward = VerifierReward(coq, db=ei["db"], run="rl-idem", timeout=30)
    kw = {"header": [COQ_HEADER] * 3, "statement": [st] * 3, "itp": ["coq"] * 3,
          "kind": ["completion"] * 3, "trainer_state": State()}
    comps = ["Proof.\n  intros; lia.\nQed.\n```", "Proof.\n  intros; lra.\nQed.\n```", "```"]
    assert reward(["p"] * 3, comps, **kw) == [1.0, 0.0, 0.0]
    reward(["p"] * 3, comps, **kw)  # a re-run of the same step stores nothing new
    assert reward.verify_calls == 2
    with session_scope(ei["db"]) as session:
        atts = session.scalars(select(Attempt).where(Attempt.key.like("rl/%/s7/%"))).all()
        assert len(atts) == 3
        by_idx = {a.sample_index: a for a in atts}
        assert by_idx[2].proof is None and by_idx[2].verdict.reason == "no_proof_found"
        assert by_idx[0].verdict.status.value == "proved"


# ----------------------------------------------------------------------------- averaging


def _perturbed_copy(src: Path, dst: Path, *, seed: int = 1, max_shard_size=None) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(dst, **kw)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def _tensors(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_average_endpoints_are_exact_and_half_is_the_mean(tiny, tmp_path):
    from prover.train.average import average_checkpoints

    tuned = _perturbed_copy(tiny, tmp_path / "tuned")
    b, t = _tensors(tiny), _tensors(tuned)
    a0 = _tensors(average_checkpoints(tiny, tuned, tmp_path / "a0", 0.0))
    a1 = _tensors(average_checkpoints(tiny, tuned, tmp_path / "a1", 1.0))
    ah = _tensors(average_checkpoints(tiny, tuned, tmp_path / "ah", 0.5))
    assert set(a0) == set(b) == set(a1) == set(ah)
    for k in b:
        assert torch.equal(a0[k], b[k]) and torch.equal(a1[k], t[k]), k
        torch.testing.assert_close(ah[k], (b[k] + t[k]) / 2, rtol=0, atol=1e-7)
    # config and tokenizer files come from the fine-tuned checkpoint; the result loads
    assert (tmp_path / "ah" / "tokenizer.json").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "ah")


def test_average_sharded_checkpoints(tiny, tmp_path):
    from prover.train.average import INDEX, average_checkpoints

    tuned = _perturbed_copy(tiny, tmp_path / "tuned", max_shard_size="40KB")
    assert (tuned / INDEX).is_file() and len(list(tuned.glob("*.safetensors"))) > 1
    out = average_checkpoints(tiny, tuned, tmp_path / "avg", 0.25)
    idx = json.loads((out / INDEX).read_text())
    assert set(idx["weight_map"].values()) == {p.name for p in out.glob("*.safetensors")}
    b, t, a = _tensors(tiny), _tensors(tuned), _tensors(out)
    for k in b:
        torch.testing.assert_close(a[k], 0.75 * b[k] + 0.25 * t[k], rtol=1e-6, atol=1e-7)


def test_average_refuses_mismatches(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    from prover.train.average import AverageError, average_checkpoints

    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    name = min(k for k in tensors if k.endswith("mlp.up_proj.weight"))
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(AverageError, match=name.replace(".", r"\.")):
        average_checkpoints(tiny, bad, tmp_path / "o1", 0.5)
    assert not (tmp_path / "o1" / "model.safetensors").exists()

    del tensors[name]
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(AverageError, match="tensor names differ"):
        average_checkpoints(tiny, bad, tmp_path / "o2", 0.5)

    other = build_tiny_model(tmp_path / "other", hidden_size=32)
    with pytest.raises(AverageError, match="hidden_size"):
        average_checkpoints(tiny, other, tmp_path / "o3", 0.5)


def test_average_cli_registers_the_result(tiny, tmp_path):
    from typer.testing import CliRunner

    from db.session import session_scope
    from prover.train.cli import train_app
    from prover.train.registry import find_checkpoint

    tuned = _perturbed_copy(tiny, tmp_path / "tuned")
    db = f"sqlite:///{tmp_path}/t.db"
    r = CliRunner().invoke(train_app, ["average", str(tiny), str(tuned), str(tmp_path / "avg"),
                                       "--alpha", "0.8", "--db", db])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    with session_scope(db) as session:
        ck = find_checkpoint(session, tmp_path / "avg")
        assert ck.id == out["checkpoint_id"] and ck.stage == "averaged"
        assert ck.data["alpha"] == 0.8
        parents = [find_checkpoint(session, p).path for p in ck.parent_ids]
        assert parents == [str(Path(tiny).resolve()), str(tuned.resolve())]
    bad = CliRunner().invoke(train_app, ["average", str(tiny), str(tmp_path / "nope"),
                                         str(tmp_path / "x"), "--db", db])
    assert bad.exit_code == 2


def test_sft_cli(tiny, tmp_path):
    from typer.testing import CliRunner

    from prover.train.cli import train_app
    from prover.train.sft import write_jsonl

    data = write_jsonl([{**r, "weight": 1.0} for r in ROWS], tmp_path / "d.jsonl")
    db = f"sqlite:///{tmp_path}/t.db"
    r = CliRunner().invoke(train_app, [
        "sft", "--model", str(tiny), "--data", str(data), "--output-dir", str(tmp_path / "o"),
        "--set", "max_steps=1", "--set", "per_device_train_batch_size=2", "--set", "stage=sft",
        "--db", db])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.rindex('{\n  "path"'):])  # after the Trainer's log lines
    assert out["checkpoint_id"] and (tmp_path / "o" / "model.safetensors").is_file()
