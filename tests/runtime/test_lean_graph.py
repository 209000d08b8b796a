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
def test_base_rows_compute_the_same_on_the_lean_graph(arch, build, tiny_bundle, tmp_path):
    """Logits after each prompt equal the full graph's with slot 0, and a batch of base rows that decodes
    and takes new requests mid-way runs on the lean session alone (the full one is gone) to the same tokens."""
    bundle = tiny_bundle(arch, **build)
    full, lean = Engine(bundle, max_batch=4, lean=False), Engine(bundle, max_batch=4)
    for prompt in PROMPTS:
        assert (lean.next_token_logits(prompt) == full.next_token_logits(prompt)).all()
    expected = {i: _alone(full, p) for i, p in enumerate(PROMPTS)}
    lean.session = None  # a step that needed the full graph would fail now
    for i, prompt in enumerate(PROMPTS[:3]):
        lean.add(str(i), prompt, max_new_tokens=12)
    out = {rid: [t for t, _ in events] for rid, events in _run_all_after_joining(lean, PROMPTS[3:], 3).items()}
    assert out == {str(i): tokens for i, tokens in expected.items()}


def _run_all_after_joining(engine: Engine, prompts: list, first: int) -> dict[str, list]:
    """Two steps, then `prompts` join as requests first, first + 1, ...; every request's (token, reason)s."""
    out: dict[str, list] = {}
    for _ in range(2):
        for event in engine.step():
            out.setdefault(event.request_id, []).append((event.token_id, event.finish_reason))
    for i, prompt in enumerate(prompts):
        engine.add(str(first + i), prompt, max_new_tokens=12)
    for rid, events in _run_all(engine).items():
        out.setdefault(rid, []).extend(events)
    return out


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
