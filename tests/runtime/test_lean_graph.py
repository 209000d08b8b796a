"""The base-model serving graph (runtime/lean_graph.py): what it drops, and that base rows compute the same there."""

import onnx
import pytest

from edgetune.common import names
from edgetune.runtime.engine import Engine
from edgetune.runtime.lean_graph import lean_serving_graph
from tests.runtime.test_engine import NEWER_SERVING, PROMPTS, _adapter, _alone, _run_all

BUNDLES = [
    *[(arch, {}) for arch in ("llama", "gpt2", "phi3", *NEWER_SERVING)],  # int8 serving, the default
    ("llama", {"method": "dora", "serve_quant": "none"}),
    ("llama", {"method": "qlora", "quant": "int4"}),
    ("qwen2", {"serve_quant": "int4"}),
]


@pytest.mark.parametrize(("arch", "build"), BUNDLES, ids=[f"{a}-{'-'.join(b.values()) or 'int8'}" for a, b in BUNDLES])
def test_base_rows_decode_the_same_on_the_lean_graph(arch, build, tiny_bundle):
    """Once every prompt is in, a batch of base rows decodes on the lean session alone (the full one is
    gone) to the tokens each request gets alone on the full graph."""
    bundle = tiny_bundle(arch, **build)
    full, lean = Engine(bundle, max_batch=4, lean=False), Engine(bundle, max_batch=4)
    expected = {str(i): _alone(full, p) for i, p in enumerate(PROMPTS[:4])}
    for i, prompt in enumerate(PROMPTS[:4]):
        lean.add(str(i), prompt, max_new_tokens=12)
    out: dict[str, list] = {}
    for event in lean.step():  # the prompts' prefill (on the full graph) and their first tokens
        out.setdefault(event.request_id, []).append(event.token_id)
    assert sorted(out) == sorted(expected)
    lean.sessions.full = None  # a run that needed the full graph would fail now
    for rid, events in _run_all(lean).items():
        out[rid] += [t for t, _ in events]
    assert out == expected


def test_the_lean_graph_drops_the_bank_and_the_prefix_and_nothing_else(tiny_bundle, tmp_path):
    """No bank, adapter_index or prefix input is left, 5 nodes per adapted Linear and 4 per layer go; an
    adapter's rows still run on the full graph (its tokens differ from the base's)."""
    bundle = tiny_bundle("llama")
    model = onnx.load(bundle / names.SERVE_MODEL, load_external_data=False)
    modules = Engine(bundle).manifest["adapted_modules"]
    lean = lean_serving_graph(model, modules)
    inputs = {i.name for i in lean.graph.input}
    assert inputs == {names.INPUT_IDS, names.POSITION_IDS, names.SEQLENS_K, names.TOTAL_SEQUENCE_LENGTH} | {
        i.name for i in model.graph.input if i.name.startswith(names.PAST)
    }
    layers = sum(1 for i in model.graph.input if i.name.startswith(names.PREFIX_KEY))
    assert len(model.graph.node) - len(lean.graph.node) == 5 * len(modules) + 4 * layers
    _adapter(bundle, tmp_path / "a", seed=3)
    tokens = {}
    for lean_graph in (True, False):
        engine = Engine(bundle, max_batch=2, lean=lean_graph)
        engine.load_adapter("a", tmp_path / "a")
        tokens[lean_graph] = (_alone(engine, PROMPTS[0], "a"), _alone(engine, PROMPTS[0]))
    assert tokens[True] == tokens[False] and tokens[True][0] != tokens[True][1]
