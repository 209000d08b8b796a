"""One adapter folded into the lean graph's weights (runtime/fold.py, Engine.fold_adapter)."""

import numpy as np
import pytest

from edgetune.common.errors import AdapterError, EdgetuneError
from edgetune.common.int8 import quantize_int8
from edgetune.runtime.engine import Engine
from tests.runtime.test_engine import PROMPTS, _adapter, _alone, _run_all

SCORED = PROMPTS[2] + PROMPTS[0]  # 15 tokens scored one at a time, each step a decode step

FLOAT_BUNDLES = [
    ("llama", {"serve_quant": "none"}),
    ("llama", {"method": "dora", "serve_quant": "none"}),
    ("gpt2", {"serve_quant": "none"}),  # Gemm Linears with a bias
]


def _engine(bundle, folder, **kwargs) -> Engine:
    engine = Engine(bundle, max_batch=4, **kwargs)
    engine.load_adapter("a", folder)
    return engine


@pytest.mark.parametrize(("arch", "build"), FLOAT_BUNDLES, ids=["lora", "dora", "gpt2"])
def test_a_folded_float_adapter_scores_as_its_branch_does(arch, build, tiny_bundle, tmp_path):
    """fp32 serving: each token's log-probability with the adapter folded is within 1e-4 of the unmerged
    branch's (only the summation order differs), computed on the lean session alone."""
    bundle = tiny_bundle(arch, **build)
    _adapter(bundle, tmp_path / "a", seed=3)
    engine = _engine(bundle, tmp_path / "a")
    branch, base = engine.token_logprobs(SCORED, "a"), engine.token_logprobs(SCORED)
    assert engine.fold_adapter("a") > 0 and engine.folded == "a"
    engine.sessions.full = None  # a run that needed the full graph would fail now
    folded = engine.token_logprobs(SCORED, "a")
    assert np.abs(folded - branch).max() < 1e-4
    assert np.abs(branch - base).max() > 1e-2  # the adapter matters


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # GPT-2: Gemm Linears with a bias after the int8 row scale
def test_a_folded_int8_adapter_is_requantized_with_its_delta(arch, tiny_bundle, tmp_path):
    """int8 serving (the default): the folded weights are W + A·B quantized per column, so the log-probabilities
    move from the base model's to within int8's rounding of the branch's."""
    bundle = tiny_bundle(arch)
    _adapter(bundle, tmp_path / "a", seed=3)
    engine = _engine(bundle, tmp_path / "a")
    branch, base = engine.token_logprobs(SCORED, "a"), engine.token_logprobs(SCORED)
    engine.fold_adapter("a")
    engine.sessions.full = None
    folded = engine.token_logprobs(SCORED, "a")
    error, shift = np.abs(folded - branch).max(), np.abs(branch - base).max()
    # W' rounds per column at its own scale: the tiny models' random adapters are 10-70x their base weights,
    # so W' rounds that much coarser than W (llama: 0.017 of a 0.4 shift; GPT-2: 0.085 of 0.44)
    assert error < 0.25 * shift, (error, shift)
    for module in engine.manifest["adapted_modules"]:
        a, b, _ = engine.bank.branch(module, engine.bank.names["a"])
        expected = quantize_int8(engine.bank.base_weight(module) + a @ b)
        for part in ("q", "scale"):
            assert np.array_equal(engine.sessions.folded_values[f"/serve/int8/{module}/{part}"].numpy(), expected[part])


def test_folded_rows_decode_the_same_beside_other_rows(tiny_bundle, tmp_path):
    """With "a" folded, a mixed batch (the folded adapter, another adapter, the base model) gives each request the
    tokens it gets alone: the folded rows run apart, on the folded weights."""
    bundle = tiny_bundle("llama")
    _adapter(bundle, tmp_path / "a", seed=3)
    _adapter(bundle, tmp_path / "b", seed=4)
    engine = _engine(bundle, tmp_path / "a")
    engine.load_adapter("b", tmp_path / "b")
    engine.fold_adapter("a")
    plan = [("0", "a"), ("1", None), ("2", "a"), ("3", "b")]
    alone = {rid: _alone(engine, PROMPTS[int(rid)], adapter) for rid, adapter in plan}
    for rid, adapter in plan:
        engine.add(rid, PROMPTS[int(rid)], adapter=adapter, max_new_tokens=12)
    together = {rid: [t for t, _ in events] for rid, events in _run_all(engine).items()}
    assert together == alone
    assert alone["0"] != _alone(engine, PROMPTS[0])  # the folded adapter changes the tokens


def test_unfolding_and_unloading_give_the_base_model_back(tiny_bundle, tmp_path):
    """fold_adapter(None), or unloading the folded adapter, puts the base weights back in the lean graph."""
    bundle = tiny_bundle("llama")
    _adapter(bundle, tmp_path / "a", seed=3)
    for unfold in (lambda e: e.fold_adapter(None), lambda e: e.unload_adapter("a")):
        engine = _engine(bundle, tmp_path / "a")
        base = engine.token_logprobs(SCORED)
        engine.fold_adapter("a")
        unfold(engine)
        assert engine.folded is None
        engine.sessions.full = None  # base-model decode steps on the lean session alone
        assert np.abs(engine.token_logprobs(SCORED) - base).max() < 1e-5
    assert engine.adapters == []


CONSTANT_BRANCHES = [{"serve_quant": "int4"}, {"method": "qlora", "quant": "int8"}]


@pytest.mark.parametrize("build", CONSTANT_BRANCHES, ids=["int4", "qlora"])
def test_int4_and_qlora_bases_keep_the_branch_as_constants(build, tiny_bundle, tmp_path):
    """int4 weights and QLoRA bases cannot take the adapter in: the lean graph keeps its branches, reading the
    adapter as constants, so the folded rows score as the unmerged branch does (1e-5), on the lean session alone."""
    bundle = tiny_bundle("llama", **build)
    _adapter(bundle, tmp_path / "a", seed=3)
    engine = _engine(bundle, tmp_path / "a")
    branch, base = engine.token_logprobs(SCORED, "a"), engine.token_logprobs(SCORED)
    engine.fold_adapter("a")
    assert engine.sessions.folded_values == {}  # no weight was replaced
    engine.sessions.full = None
    assert np.abs(engine.token_logprobs(SCORED, "a") - branch).max() < 1e-5
    assert np.abs(branch - base).max() > 1e-2


def test_what_cannot_be_folded_is_refused_in_one_line(tiny_bundle, tmp_path):
    """An unknown adapter, an engine without the lean graph: AdapterError or EdgetuneError naming the cause."""
    bundle = tiny_bundle("llama")
    _adapter(bundle, tmp_path / "a", seed=3)
    engine = _engine(bundle, tmp_path / "a")
    with pytest.raises(AdapterError, match="no adapter named 'x'"):
        engine.fold_adapter("x")
    with pytest.raises(EdgetuneError, match="lean=False"):
        _engine(bundle, tmp_path / "a", lean=False).fold_adapter("a")
    assert engine.folded is None
