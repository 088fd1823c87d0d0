"""Generation backends: hf (tiny local model), openai (local fake server), portfolio, vllm mapping."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from prover.generation import (
    Completion,
    GenerationError,
    SamplingParams,
    apply_stop,
    make_generator,
)
from prover.generation.base import split_evenly
from prover.generation.portfolio import COQ_TACTICS, LEAN_TACTICS, parse_prompt, proofs_for
from prover.prompts import get_format

LEAN_HEADER = (
    "import Mathlib\n\nset_option maxHeartbeats 0\n\nopen BigOperators Real Nat Topology Rat\n\n"
)
LEAN_STMT = "theorem t1 (x y : ℝ) (h₀ : x + y = 10) (h₁ : x - y = 2) : x = 6 := by\n"
LEAN_NAT_STMT = "theorem t2 (n : ℕ) (h₀ : n % 5 = 3) : 2 * n % 5 = 1 := by\n"
COQ_HEADER = "Require Import ZArith.\nRequire Import Lia.\n\n"
COQ_STMT = "Theorem t3 :\n  forall n : nat, (n + 0 = n)%nat."


# --------------------------------------------------------------------------- base


def test_sampling_params_validation_and_stop_tuple():
    assert SamplingParams(stop="```").stop == ("```",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    for bad in ({"n": 0}, {"temperature": -1}, {"top_p": 0}, {"max_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    assert SamplingParams(temperature=0).greedy


def test_apply_stop_and_split_evenly():
    assert apply_stop("abc```def", ("```",)) == ("abc", True)
    assert apply_stop("a QED b ```", ("```", "QED")) == ("a ", True)
    assert apply_stop("abc", ("x", "")) == ("abc", False)
    assert split_evenly(10, 3) == [4, 3, 3]
    assert sum(split_evenly(7, 4)) == 7


def test_make_generator_errors():
    with pytest.raises(ValueError, match="unknown generation backend"):
        make_generator("nope", model="x")
    with pytest.raises(ValueError, match="needs model"):
        make_generator("hf", model=None)


# --------------------------------------------------------------------------- hf


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from prover.tiny import build_tiny_model

    corpus = [
        LEAN_HEADER + LEAN_STMT + "  linarith\n",
        COQ_HEADER + COQ_STMT + "\nProof. lia. Qed.",
    ]
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), corpus=corpus, vocab_size=384, seed=0)


@pytest.fixture(scope="module")
def hf_gen(tiny_path):
    return make_generator("hf", model=str(tiny_path), batch_size=2)


def test_tiny_model_loads_like_a_checkpoint(tiny_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert tok.chat_template and tok.eos_token == "<|endoftext|>"
    ids = tok("theorem foo : 1 + 1 = 2 := by\n  norm_num")["input_ids"]
    assert tok.decode(ids) == "theorem foo : 1 + 1 = 2 := by\n  norm_num"
    assert max(ids) < model.config.vocab_size


def test_tiny_model_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    from prover.tiny import build_tiny_model

    def weights(name, **kw):
        return load_file(build_tiny_model(tmp_path / name, **kw) / "model.safetensors")

    def same(a, b):
        return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)

    base = weights("a", seed=3)
    assert same(base, weights("b", seed=3))
    assert not same(base, weights("c", seed=4))
    assert same(weights("d", seed=3, train_steps=2), weights("e", seed=3, train_steps=2))


def test_hf_generate_shapes_counts_and_seed(hf_gen):
    prompts = [
        "Complete the following Lean 4 code:\n\n```lean4\n" + LEAN_STMT,
        "theorem x : True := by\n",
    ]
    params = SamplingParams(n=3, max_tokens=12, seed=7)
    progress: list[int] = []
    out = hf_gen.generate(prompts, params, progress=progress.append)
    assert len(out) == 2 and all(len(cs) == 3 for cs in out)
    assert sum(progress) == 2
    for prompt, cs in zip(prompts, out):
        n_prompt = len(hf_gen.tokenizer(prompt)["input_ids"])
        for c in cs:
            assert isinstance(c, Completion)
            assert c.prompt_tokens == n_prompt
            assert 0 < c.completion_tokens <= 12
            assert c.finish_reason in ("stop", "length")
    assert hf_gen.generate(prompts, params) == out  # same seed, same outputs
    assert hf_gen.generate(prompts, SamplingParams(n=3, max_tokens=12, seed=8)) != out
    assert len({c.text for c in out[0]}) > 1  # sampled, not copies


def test_hf_greedy_and_left_padding(hf_gen):
    short, long = (
        "theorem a : True := by\n",
        "theorem b (x y z : ℕ) (h : x + y + z = 10) : x ≤ 10 := by\n",
    )
    greedy = SamplingParams(n=2, temperature=0, max_tokens=8)
    both = hf_gen.generate([short, long], greedy)
    alone = hf_gen.generate([short], greedy)
    assert both[0][0] == both[0][1]  # greedy: n identical samples
    assert both[0][0].text == alone[0][0].text  # left padding does not change the result


def test_hf_stop_strings_cut_text(hf_gen):
    prompt = ["theorem x : True := by\n"]
    base = hf_gen.generate(prompt, SamplingParams(n=1, max_tokens=24, seed=1))[0][0]
    assert len(base.text) > 6
    stop = base.text[4:6]
    cut = hf_gen.generate(prompt, SamplingParams(n=1, max_tokens=24, seed=1, stop=(stop,)))[0][0]
    assert cut.text == base.text.split(stop)[0]
    assert stop not in cut.text and cut.finish_reason == "stop"
    assert cut.completion_tokens <= base.completion_tokens


def test_hf_chat_template_and_fallback(hf_gen):
    conv = get_format("goedel-v2").build(LEAN_HEADER, LEAN_STMT)
    rendered = hf_gen.render_chat(conv)
    assert rendered.startswith("<|im_start|>user\n") and rendered.endswith(
        "<|im_start|>assistant\n"
    )
    out = hf_gen.chat(
        [conv, [{"role": "user", "content": "hi"}]], SamplingParams(n=2, max_tokens=6, seed=0)
    )
    assert [len(cs) for cs in out] == [2, 2]
    assert out[0][0].prompt_tokens == len(hf_gen.tokenizer(rendered)["input_ids"])
    template = hf_gen.tokenizer.chat_template
    try:
        hf_gen.tokenizer.chat_template = None
        fb = hf_gen.render_chat(
            [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
        )
        assert fb == "System:\nS\n\nUser:\nU\n\nAssistant:\n"
    finally:
        hf_gen.tokenizer.chat_template = template


# --------------------------------------------------------------------------- openai


class _FakeOpenAI:
    """A tiny OpenAI-compatible server: fails the first POST with 503, records requests."""

    def __init__(self, delay: float = 0.0):
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.failed_once = False
        self.inflight = 0
        self.max_inflight = 0
        self.delay = delay
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "served-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append((self.path, body))
                    first = not owner.failed_once
                    owner.failed_once = True
                    owner.inflight += 1
                    owner.max_inflight = max(owner.max_inflight, owner.inflight)
                try:
                    time.sleep(owner.delay)
                    if first:
                        return self._send(503, {"error": "warming up"})
                    if body.get("model") == "bad":
                        return self._send(400, {"error": "unknown model"})
                    n = body.get("n", 1)
                    if self.path.endswith("/completions") and "prompt" in body:
                        prompts = body["prompt"]
                        choices = [
                            {"index": i * n + j, "text": f"{p[-5:]}|s{j}", "finish_reason": "stop"}
                            for i, p in enumerate(prompts)
                            for j in range(n)
                        ][::-1]  # out of order on purpose: the client sorts by index
                        usage = {
                            "prompt_tokens": 10 * len(prompts),
                            "completion_tokens": 6 * len(choices),
                        }
                        return self._send(200, {"choices": choices, "usage": usage})
                    last = body["messages"][-1]["content"]
                    choices = [
                        {
                            "index": j,
                            "message": {"role": "assistant", "content": f"re:{last[:4]}|s{j}"},
                            "finish_reason": "length",
                        }
                        for j in range(n)
                    ]
                    return self._send(
                        200,
                        {
                            "choices": choices,
                            "usage": {"prompt_tokens": 7, "completion_tokens": 5 * n},
                        },
                    )
                finally:
                    with owner.lock:
                        owner.inflight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server():
    srv = _FakeOpenAI()
    yield srv
    srv.close()


def test_openai_completions_retry_batching_and_params(fake_server):
    g = make_generator(
        "openai",
        model="m",
        base_url=fake_server.url,
        batch_size=2,
        concurrency=2,
        backoff=0.01,
        api_key="k",
    )
    prompts = ["prompt-AAAAA", "prompt-BBBBB", "prompt-CCCCC"]
    params = SamplingParams(n=2, temperature=0.7, top_p=0.9, max_tokens=33, seed=5, stop=("```",))
    progress: list[int] = []
    out = g.generate(prompts, params, progress=progress.append)
    assert [[c.text for c in cs] for cs in out] == [
        ["AAAAA|s0", "AAAAA|s1"],
        ["BBBBB|s0", "BBBBB|s1"],
        ["CCCCC|s0", "CCCCC|s1"],
    ]
    assert sum(progress) == 3
    posts = [b for p, b in fake_server.requests if p == "/v1/completions"]
    assert len(posts) == 3  # 2 batches + 1 retried after the 503
    sizes = sorted(len(b["prompt"]) for b in posts[1:])
    assert sizes == [1, 2]
    for b in posts:
        assert (b["n"], b["temperature"], b["top_p"], b["max_tokens"], b["seed"], b["stop"]) == (
            2,
            0.7,
            0.9,
            33,
            5,
            ["```"],
        )
        assert b["model"] == "m"
    # usage: request totals split evenly over prompts and choices
    assert all(c.prompt_tokens == 10 and c.completion_tokens == 6 for cs in out for c in cs)
    assert out[0][0].finish_reason == "stop"


def test_openai_chat_and_model_discovery(fake_server):
    g = make_generator("openai", model=None, base_url=fake_server.url, backoff=0.01)
    assert g.model == "served-model"
    convs = [[{"role": "user", "content": "abcdef"}], [{"role": "user", "content": "wxyz!"}]]
    out = g.chat(convs, SamplingParams(n=3, max_tokens=5))
    assert [[c.text for c in cs] for cs in out] == [
        ["re:abcd|s0", "re:abcd|s1", "re:abcd|s2"],
        ["re:wxyz|s0", "re:wxyz|s1", "re:wxyz|s2"],
    ]
    assert all(
        c.prompt_tokens == 7 and c.completion_tokens == 5 and c.finish_reason == "length"
        for cs in out
        for c in cs
    )
    bodies = [b for p, b in fake_server.requests if p == "/v1/chat/completions"]
    assert all(b["n"] == 3 and b["max_tokens"] == 5 and "messages" in b for b in bodies)
    greedy = g.chat(convs[:1], SamplingParams(n=2, temperature=0))
    assert [c.text for c in greedy[0]] == ["re:abcd|s0", "re:abcd|s0"]
    assert fake_server.requests[-1][1]["n"] == 1


def test_openai_4xx_is_not_retried(fake_server):
    g = make_generator("openai", model="bad", base_url=fake_server.url, backoff=0.01)
    with pytest.raises(GenerationError, match="400"):
        g.generate(["x", "y"], SamplingParams())
    # one 503 (retried) then one 400 (not retried)
    assert len(fake_server.requests) == 2


def test_openai_gives_up_on_dead_server():
    g = make_generator(
        "openai",
        model="m",
        base_url="http://127.0.0.1:9/v1",
        max_retries=2,
        backoff=0.001,
        timeout=2,
    )
    with pytest.raises(GenerationError, match="after 3 attempts"):
        g.generate(["x"], SamplingParams())


def test_openai_concurrency():
    srv = _FakeOpenAI(delay=0.15)
    try:
        srv.failed_once = True  # no 503 here
        g = make_generator("openai", model="m", base_url=srv.url, batch_size=1, concurrency=4)
        t = time.monotonic()
        out = g.generate([f"p{i}----" for i in range(8)], SamplingParams(n=1))
        took = time.monotonic() - t
        assert [cs[0].text for cs in out] == [f"{i}----|s0" for i in range(8)]
        assert srv.max_inflight >= 2
        assert took < 8 * 0.15  # faster than serial
    finally:
        srv.close()


# --------------------------------------------------------------------------- portfolio


def test_portfolio_proofs_contain_tactic_lists_and_are_deterministic():
    coq = proofs_for("coq", COQ_STMT)
    lean = proofs_for("lean", LEAN_NAT_STMT)
    assert coq == proofs_for("coq", COQ_STMT) and lean == proofs_for("lean", LEAN_NAT_STMT)
    assert len(set(coq)) == len(coq) > 1 and len(set(lean)) == len(lean) > 1
    for p in coq:
        lines = p.split("\n")
        assert lines[0].startswith("Require Import") and "Lia" in lines[0] and "Psatz" in lines[0]
        assert lines[1] == "Proof." and lines[-1] == "Qed."
        assert all(t in p for t in COQ_TACTICS)
    for p in lean:
        assert "first |" in p and all(t in p for t in LEAN_TACTICS)
        assert "native_decide" not in p and "sorry" not in p
    # real statements lead with the real-arithmetic tactics and get nlinarith hints
    real = proofs_for("lean", LEAN_STMT)
    assert real[0].index("linarith") < real[0].index("omega")
    assert any("sq_nonneg (x - y)" in p for p in real)


@pytest.mark.parametrize("fmt", ["deepseek-v1.5", "stp", "goedel-v2", "coq", "coq-chat"])
def test_portfolio_through_prompt_formats(fmt):
    f = get_format(fmt)
    header, stmt = (LEAN_HEADER, LEAN_STMT) if f.itp == "lean" else (COQ_HEADER, COQ_STMT)
    prompt = f.build(header, stmt, "Find x.")
    g = make_generator("portfolio", model=None)
    params = SamplingParams(n=9)
    out = (g.chat if f.is_chat else g.generate)([prompt], params)
    assert len(out) == 1 and len(out[0]) == 9
    assert all(c.completion_tokens == 0 for c in out[0])
    proofs = [f.extract(header, stmt, c.text) for c in out[0]]
    expected = proofs_for(f.itp, stmt)
    assert [p.proof for p in proofs] == [expected[j % len(expected)] for j in range(9)]
    assert not any(p.statement_changed or p.helpers for p in proofs)
    assert (g.chat if f.is_chat else g.generate)([prompt], params) == out


def test_portfolio_chat_after_a_correction_turn_and_unparseable_prompt():
    from prover.correction import correction_conversation
    from verifier.types import Message

    conv = get_format("goedel-v2").build(LEAN_HEADER, LEAN_NAT_STMT)
    nxt = correction_conversation(conv, "```lean4\nx\n```", [Message("error", "boom", 1, 0)])
    g = make_generator("portfolio", model=None)
    text = g.chat([nxt], SamplingParams())[0][0].text
    assert (
        get_format("goedel-v2").extract(LEAN_HEADER, LEAN_NAT_STMT, text).proof
        == proofs_for("lean", LEAN_NAT_STMT)[0]
    )
    assert g.generate(["no code here"], SamplingParams(n=2))[0][0].text == ""
    assert (
        parse_prompt("```lean4\ntheorem a : True := by\n").statement == "theorem a : True := by\n"
    )
    coq = get_format("coq-chat").build(COQ_HEADER, COQ_STMT, "uses (* nested comments")
    assert parse_prompt(coq[0]["content"]).statement == COQ_STMT


# --------------------------------------------------------------------------- vllm (mapping only)


def test_vllm_parameter_mapping():
    from prover.generation.vllm import llm_kwargs, sampling_kwargs, to_completions

    assert sampling_kwargs(
        SamplingParams(n=4, temperature=0.8, top_p=0.9, max_tokens=100, seed=3, stop=("```",))
    ) == {
        "n": 4,
        "temperature": 0.8,
        "top_p": 0.9,
        "max_tokens": 100,
        "seed": 3,
        "stop": ["```"],
    }
    greedy = sampling_kwargs(SamplingParams(n=3, temperature=0, seed=None))
    assert greedy["n"] == 1 and greedy["top_p"] == 1.0 and greedy["seed"] is None
    assert "stop" not in greedy
    kw = llm_kwargs(
        "m",
        tensor_parallel_size=2,
        max_model_len=8192,
        dtype="bfloat16",
        gpu_memory_utilization=0.8,
        seed=1,
    )
    assert kw == {
        "model": "m",
        "tensor_parallel_size": 2,
        "max_model_len": 8192,
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.8,
        "seed": 1,
        "trust_remote_code": False,
    }
    assert "max_model_len" not in llm_kwargs("m")
    req = SimpleNamespace(
        prompt_token_ids=[1, 2, 3],
        outputs=[
            SimpleNamespace(index=1, text="b", token_ids=[5], finish_reason="length"),
            SimpleNamespace(index=0, text="a", token_ids=[4, 4], finish_reason="stop"),
        ],
    )
    assert to_completions([req]) == [
        [Completion("a", 3, 2, "stop"), Completion("b", 3, 1, "length")]
    ]
    one = SimpleNamespace(
        prompt_token_ids=[1],
        outputs=[SimpleNamespace(index=0, text="g", token_ids=[7], finish_reason="stop")],
    )
    assert to_completions([one], n=3) == [[Completion("g", 1, 1, "stop")] * 3]


def test_vllm_missing_gives_clear_error():
    pytest.importorskip("prover.generation.vllm")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed")
    with pytest.raises(ImportError, match="gpu extra"):
        make_generator("vllm", model="some/model")
