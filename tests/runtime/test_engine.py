"""The decode engine: the serving graph equals the with-past graph, and batching changes no token."""

import json

import numpy as np
import onnx
import pytest

from edgetune.common import names
from edgetune.common.errors import AdapterError, EdgetuneError
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import config_scaling, save_adapter
from edgetune.runtime.engine import Engine
from edgetune.runtime.generate import Generator
from edgetune.runtime.sampling import SamplingParams
from tests.parity import inference_logits, random_adapter
from tests.tiny_models import ALL_ARCHS

PROMPTS = [[5, 17, 42, 8, 99, 23], [7, 7, 31], [60, 12, 250, 3, 44, 90, 101, 5, 6], [11], [200, 201, 202, 9]]
LONG_PROMPT = PROMPTS[2] + PROMPTS[0]  # 15 tokens: past the tiny Gemma 2/3 sliding window (8)
NEWER_SERVING = ("qwen3", "granite", "gemma", "gemma2", "gemma3_text")  # q/k norms, scales, windows, local rope


def _adapter(bundle, folder, seed, base_sha=None):
    """A random adapter saved as a PEFT folder; returns (weights, scaling)."""
    manifest = read_manifest(bundle)
    weights = random_adapter(bundle, seed=seed, scale=0.3)
    save_adapter(folder, weights, manifest["adapter_config"], base_sha or manifest["source"]["weights_sha256"])
    return weights, config_scaling(manifest["adapter_config"])


def _run_all(engine: Engine) -> dict[str, list]:
    """Step until idle; every request's token ids (and finish reasons)."""
    out: dict[str, list] = {}
    while engine.has_work:
        for event in engine.step():
            out.setdefault(event.request_id, []).append((event.token_id, event.finish_reason))
    return out


def _alone(engine: Engine, prompt, adapter=None, n=12) -> list[int]:
    engine.add("alone", prompt, adapter=adapter, max_new_tokens=n)
    return [t for t, _ in _run_all(engine)["alone"]]


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_serving_graph_equals_the_with_past_graph(arch, tiny_bundle, tmp_path):
    """Prefill logits within 1e-4 of the inference graph's (a prompt shorter and one longer than a sliding
    window); greedy tokens equal the Generator's (adapter on/off)."""
    bundle = tiny_bundle(arch, serve_quant="none")
    weights, scaling = _adapter(bundle, tmp_path / "a", seed=3)
    engine = Engine(bundle, max_batch=4)
    engine.load_adapter("a", tmp_path / "a")
    for prompt in (PROMPTS[0], LONG_PROMPT):
        for name, adapter, scale in (("a", weights, scaling), (None, weights, 0.0)):
            reference = inference_logits(bundle, np.array([prompt]), adapter, scale)[0, -1]
            np.testing.assert_allclose(engine.next_token_logits(prompt, name), reference, atol=1e-4)
    generator = Generator(bundle, adapter=tmp_path / "a")
    assert _alone(engine, PROMPTS[0], "a", 16) == generator.generate_ids(PROMPTS[0], 16)
    generator.set_adapter(None)
    assert _alone(engine, PROMPTS[2], None, 16) == generator.generate_ids(PROMPTS[2], 16)


@pytest.mark.parametrize(("arch", "quant"), [("llama", "int4"), ("qwen3", "int4"), ("gemma2", "int8")])
def test_qlora_bundles_serve_the_base_they_trained_on(arch, quant, tiny_bundle, tmp_path):
    """A QLoRA bundle's serving graph keeps its quantized base: logits within 1e-4 of its inference graph's.

    int4's offset Add and the adapter bank's Add once shared a node name, and ORT refused the graph.
    """
    bundle = tiny_bundle(arch, method="qlora", quant=quant)
    weights, scaling = _adapter(bundle, tmp_path / "a", seed=7)
    engine = Engine(bundle)
    engine.load_adapter("a", tmp_path / "a")
    reference = inference_logits(bundle, np.array([LONG_PROMPT]), weights, scaling)[0, -1]
    np.testing.assert_allclose(engine.next_token_logits(LONG_PROMPT, "a"), reference, atol=1e-4)


def test_the_score_scale_follows_query_pre_attn_scalar(tmp_path):
    """The tiny Gemma configs have query_pre_attn_scalar = head_dim; with 32, GQA's scale must follow it
    (measured without it: 0.068 off)."""
    from edgetune.builder.pipeline import build_bundle
    from edgetune.options import BuildConfig
    from tests.tiny_models import make_model_dir

    model = make_model_dir("gemma2", tmp_path / "hf", query_pre_attn_scalar=32)
    bundle = tmp_path / "bundle"
    build_bundle(BuildConfig(str(model), bundle, targets="all-linear", serve_quant="none"))
    weights, scaling = _adapter(bundle, tmp_path / "a", seed=3)
    engine = Engine(bundle)
    engine.load_adapter("a", tmp_path / "a")
    reference = inference_logits(bundle, np.array([LONG_PROMPT]), weights, scaling)[0, -1]
    np.testing.assert_allclose(engine.next_token_logits(LONG_PROMPT, "a"), reference, atol=1e-4)


def test_longrope_turns_as_transformers_does_before_and_past_the_pretrained_length(tmp_path):
    """Phi-3.5's and Phi-3 128k's LongRoPE: short factors below original_max_position_embeddings (16 here),
    long ones from there on, as transformers turns a prompt and then each decoded token."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgetune.builder.pipeline import build_bundle
    from edgetune.options import BuildConfig
    from tests.tiny_models import make_model_dir

    factors = {"short_factor": [1.0 + 0.2 * i for i in range(8)], "long_factor": [2.0 + 3 * i for i in range(8)]}
    rope = {"type": "longrope", **factors}
    model = make_model_dir(
        "phi3", tmp_path / "hf", max_position_embeddings=64, original_max_position_embeddings=16, rope_scaling=rope
    )
    bundle = tmp_path / "bundle"
    build_bundle(BuildConfig(str(model), bundle, serve_quant="none"))
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    prompt = (PROMPTS[2] + PROMPTS[0] + PROMPTS[4] + PROMPTS[1] + PROMPTS[0])[
        :24
    ]  # (24,): 16 pretrained positions and 8 past them
    with torch.no_grad():
        out = hf(torch.tensor([prompt[:16]]), use_cache=True)
        past_short = out.logits[0, -1].numpy()
        for i in range(16, 24):  # one token a call: transformers switches to the long factors per call
            out = hf(torch.tensor([[prompt[i]]]), past_key_values=out.past_key_values, use_cache=True)
    engine = Engine(bundle)
    np.testing.assert_allclose(engine.next_token_logits(prompt[:16]), past_short, atol=1e-4)
    np.testing.assert_allclose(engine.next_token_logits(prompt), out.logits[0, -1].numpy(), atol=1e-4)
    adapter = random_adapter(bundle, seed=1, scale=0.3)
    np.testing.assert_allclose(
        inference_logits(bundle, np.array([prompt[:16]]), adapter, 0.0)[0, -1], past_short, atol=1e-4
    )


def test_dora_rows_equal_the_dora_inference_graph(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama", method="dora", serve_quant="none")
    _adapter(bundle, tmp_path / "d", seed=4)
    engine = Engine(bundle)
    engine.load_adapter("d", tmp_path / "d")
    generator = Generator(bundle, adapter=tmp_path / "d")
    assert _alone(engine, PROMPTS[0], "d", 16) == generator.generate_ids(PROMPTS[0], 16)
    generator.set_adapter(None)
    assert _alone(engine, PROMPTS[0], None, 16) == generator.generate_ids(PROMPTS[0], 16)


@pytest.mark.parametrize(("arch", "quant"), [("llama", "int4"), ("gpt2", "int8"), ("qwen2", "none")])
def test_quantized_serving_stays_within_measured_bounds(arch, quant, tiny_bundle, tmp_path):
    """int4 / int8 serving graphs against the fp32 with-past graph (tiny models, logit std about 0.16)."""
    bundle = tiny_bundle(arch, serve_quant=quant)
    weights, scaling = _adapter(bundle, tmp_path / "a", seed=5)
    engine = Engine(bundle)
    engine.load_adapter("a", tmp_path / "a")
    bound = {"int4": 0.25, "int8": 0.05, "none": 1e-4}[quant]  # measured max: int4 0.036 (mistral), int8 0.025 (phi3)
    for prompt in PROMPTS[:3]:
        reference = inference_logits(bundle, np.array([prompt]), weights, scaling)[0, -1]
        assert np.abs(engine.next_token_logits(prompt, "a") - reference).max() < bound


def test_int8_serving_quantizes_each_input_once_per_row(tiny_bundle):
    """int8 Linears and head on MatMulIntegerToFloat, activations quantized per row (the last axis only) once per
    input tensor: q/k/v share one, gate/up another. No MatMulNBits (its cost grows with every row) and no
    DynamicQuantize* (one scale for the whole batch)."""
    bundle = tiny_bundle("llama")  # --serve-quant int8, the default
    model = onnx.load(bundle / names.SERVE_MODEL, load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    layers = json.loads((bundle / names.HF_CONFIG).read_text())["num_hidden_layers"]
    assert "MatMulNBits" not in ops and not any(op.startswith("DynamicQuantize") for op in ops)
    assert ops.count("MatMulIntegerToFloat") == 7 * layers + 1  # q, k, v, o, gate, up, down; the head
    assert ops.count("QuantizeLinear") == 4 * layers + 1  # the norm's output, o's input, the norm's, down's; head's
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "ReduceMax":
            assert onnx.numpy_helper.to_array(inits[node.input[1]]).tolist() == [-1], node.name


@pytest.mark.parametrize("arch", ["llama", "gpt2", *NEWER_SERVING])
def test_batched_greedy_equals_alone_over_three_adapters(arch, tiny_bundle, tmp_path):
    """8 concurrent requests over the base and two adapters, some joining mid-way: each as it is alone."""
    bundle = tiny_bundle(arch)
    engine = Engine(bundle, max_batch=8)
    for i, name in enumerate(("a", "b")):
        _adapter(bundle, tmp_path / name, seed=10 + i)
        engine.load_adapter(name, tmp_path / name)
    requests = [(f"r{i}", PROMPTS[i % len(PROMPTS)], (None, "a", "b")[i % 3]) for i in range(8)]
    for rid, prompt, adapter in requests[:5]:
        engine.add(rid, prompt, adapter=adapter, max_new_tokens=12)
    out: dict[str, list] = {}
    for _ in range(3):  # the rest join a running batch
        for event in engine.step():
            out.setdefault(event.request_id, []).append(event.token_id)
    for rid, prompt, adapter in requests[5:]:
        engine.add(rid, prompt, adapter=adapter, max_new_tokens=12)
    for rid, tokens in _run_all(engine).items():
        out.setdefault(rid, []).extend(t for t, _ in tokens)
    for rid, prompt, adapter in requests:
        assert out[rid] == _alone(engine, prompt, adapter), rid


def test_rows_are_reused_as_requests_finish_and_cancel_frees_a_row(tiny_bundle):
    bundle = tiny_bundle("llama")
    engine = Engine(bundle, max_batch=2)
    for i, prompt in enumerate(PROMPTS):
        engine.add(f"r{i}", prompt, max_new_tokens=4 + i)
    assert (engine.active, engine.waiting) == (0, 5)
    first = engine.step()
    assert {e.request_id for e in first} == {"r0", "r1"} and (engine.active, engine.waiting) == (2, 3)
    engine.cancel("r1")
    events = engine.step()
    cancelled = [e for e in events if e.request_id == "r1"]
    assert cancelled == [cancelled[0]] and cancelled[0].finish_reason == "cancelled" and cancelled[0].token_id is None
    assert {e.request_id for e in events} == {"r0", "r1", "r2"}  # r2 took r1's row at once
    out = _run_all(engine)
    assert engine.active == engine.waiting == 0 and not engine.has_work
    for i in (2, 3, 4):
        tokens = [t for t, _ in out[f"r{i}"]]
        if i == 2:
            tokens = [next(e.token_id for e in events if e.request_id == "r2"), *tokens]
        assert tokens == _alone(engine, PROMPTS[i], n=4 + i)
        assert out[f"r{i}"][-1][1] == "length"


def test_stop_strings_eos_and_length(tiny_bundle):
    bundle = tiny_bundle("llama")
    engine = Engine(bundle)
    tokens = _alone(engine, PROMPTS[0], n=12)
    text = engine.tokenizer.decode(tokens, skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    engine.add("s", PROMPTS[0], max_new_tokens=12, stop=[stop])
    engine.add("i", PROMPTS[0], max_new_tokens=12, stop_ids=[tokens[2]])
    events: dict[str, list] = {}
    while engine.has_work:
        for e in engine.step():
            events.setdefault(e.request_id, []).append(e)
    assert "".join(e.text for e in events["s"]) == text[: text.index(stop)]
    assert events["s"][-1].finish_reason == "stop"
    assert [e.token_id for e in events["i"]] == tokens[: tokens.index(tokens[2]) + 1]
    assert events["i"][-1].finish_reason == "stop"


def test_bad_requests_and_adapters_are_refused(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama")
    engine = Engine(bundle)
    _adapter(bundle, tmp_path / "foreign", seed=1, base_sha="0" * 64)
    with pytest.raises(AdapterError, match="different base model"):
        engine.load_adapter("f", tmp_path / "foreign")
    _adapter(tiny_bundle("qwen2"), tmp_path / "qwen", seed=1)
    with pytest.raises(AdapterError):
        engine.load_adapter("q", tmp_path / "qwen")
    _adapter(bundle, tmp_path / "a", seed=1)
    engine.load_adapter("a", tmp_path / "a")
    with pytest.raises(AdapterError, match="loaded already"):
        engine.load_adapter("a", tmp_path / "a")
    with pytest.raises(AdapterError, match="no adapter named 'z'"):
        engine.add("x", PROMPTS[0], adapter="z")
    engine.add("x", PROMPTS[0], adapter="a", max_new_tokens=3)
    with pytest.raises(AdapterError, match="in use"):
        engine.unload_adapter("a")
    with pytest.raises(EdgetuneError, match="already in the engine"):
        engine.add("x", PROMPTS[0])
    with pytest.raises(EdgetuneError, match="empty"):
        engine.add("y", [])
    with pytest.raises(EdgetuneError, match="more than the context"):
        engine.add("y", [5] * (engine.capacity + 1))
    with pytest.raises(EdgetuneError, match="max_new_tokens"):
        engine.add("y", PROMPTS[0], max_new_tokens=0)
    _run_all(engine)
    engine.unload_adapter("a")
    assert engine.adapters == []


def test_sampling_is_reproducible_per_request(tiny_bundle):
    bundle = tiny_bundle("llama")
    engine = Engine(bundle, max_batch=3)
    params = SamplingParams(temperature=0.9, top_p=0.9, seed=7)
    for rid in ("x", "y"):
        engine.add(rid, PROMPTS[0], sampling=params, max_new_tokens=10)
    engine.add("z", PROMPTS[1], sampling=SamplingParams(temperature=1.0, seed=8), max_new_tokens=10)
    out = _run_all(engine)
    assert out["x"] == out["y"]


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma3_text"])  # gemma3_text: windows and local rope too
def test_chunked_prefill_equals_one_shot(arch, tiny_bundle, tmp_path):
    """Prompts prefilled 4 tokens a step, while other rows decode, give the one-shot tokens and logits."""
    bundle = tiny_bundle(arch, serve_quant="none")
    _adapter(bundle, tmp_path / "a", seed=6)
    one_shot, chunked = Engine(bundle), Engine(bundle, prefill_chunk=4)
    for engine in (one_shot, chunked):
        engine.load_adapter("a", tmp_path / "a")
    long_prompt = PROMPTS[2] + PROMPTS[0] + PROMPTS[4]  # 19 tokens: 5 chunks
    chunked.add("short", PROMPTS[1], max_new_tokens=12)
    out: dict[str, list] = {"short": [e.token_id for e in chunked.step()]}
    chunked.add("long", long_prompt, adapter="a", max_new_tokens=12)
    while chunked.has_work:
        for event in chunked.step():
            out.setdefault(event.request_id, []).append(event.token_id)
    assert len(out["short"]) == 12 and out["short"] == _alone(one_shot, PROMPTS[1])
    assert out["long"] == _alone(one_shot, long_prompt, "a")
    first, rest = long_prompt[:7], long_prompt[7:]
    chunked.add("p", first, adapter="a", max_new_tokens=1)  # a cached prefix continued by a chunk
    row = 0
    _run_all(chunked)
    reference = one_shot.next_token_logits(long_prompt, "a")
    logits = chunked._run(
        row,
        row + 1,
        np.array([rest]),
        np.arange(7, len(long_prompt))[None],
        np.array([len(long_prompt) - 1], np.int32),
        len(long_prompt),
        np.array([chunked.bank.names["a"]]),
        chunked.cache.prefix(row, 7, chunked.sessions.query_width),
    )
    np.testing.assert_allclose(logits[0, -1], reference, atol=1e-4)


def test_with_trusted_keys_the_engine_takes_only_signed_bundles_and_adapters(tiny_bundle, tmp_path):
    from edgetune.common.bundle import sign_manifest
    from edgetune.common.trust import TrustError, keygen
    from tests.tamper import copy_bundle

    keygen(tmp_path / "key")
    trust = tmp_path / "key.pub"
    with pytest.raises(TrustError, match="not signed, and trusted keys are configured"):
        Engine(tiny_bundle("llama"), max_batch=1, trust=trust)
    bundle = copy_bundle(tiny_bundle("llama"), tmp_path / "signed")
    sign_manifest(bundle, tmp_path / "key")
    engine = Engine(bundle, max_batch=1, trust=trust)
    manifest = read_manifest(bundle)
    weights, sha = random_adapter(bundle, seed=3), manifest["source"]["weights_sha256"]
    save_adapter(tmp_path / "unsigned", weights, manifest["adapter_config"], sha)
    with pytest.raises(TrustError, match="not signed"):
        engine.load_adapter("unsigned", tmp_path / "unsigned")
    save_adapter(tmp_path / "signed_adapter", weights, manifest["adapter_config"], sha, key=tmp_path / "key")
    engine.load_adapter("signed", tmp_path / "signed_adapter")
    assert engine.adapters == ["signed"]
