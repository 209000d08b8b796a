"""Export and weight handling: the weights go to disk once, graph protos stay structure only."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from optimum.exporters.onnx import onnx_export_from_model
from transformers import AutoModelForCausalLM, LlamaConfig

from edgetune.builder.export import TASKS, export_graphs
from edgetune.builder.pipeline import build_bundle
from edgetune.builder.weights import MIN_EXTERNAL_BYTES, PAGE, STAGING_WEIGHTS, WeightStore, share_base_weights
from edgetune.common.names import BASE_WEIGHTS
from edgetune.options import BuildConfig


def _nodes(model: onnx.ModelProto) -> list:
    return [(n.op_type, n.name, list(n.input), list(n.output)) for n in model.graph.node]


@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt2"])
def test_export_hands_over_exactly_the_weights_of_a_plain_export(arch, tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch), dtype=torch.float32).eval()
    store = WeightStore(tmp_path / STAGING_WEIGHTS)
    paths = export_graphs(model, tmp_path, store)
    store.close()
    for task, path in zip(TASKS, paths):
        plain = tmp_path / "plain" / task
        onnx_export_from_model(model, plain, task=task, no_post_process=True, do_validation=False)
        want = onnx.load(plain / "model.onnx")
        structure = onnx.load(path, load_external_data=False)
        assert not [t.name for t in structure.graph.initializer if len(t.raw_data) >= MIN_EXTERNAL_BYTES]
        got = onnx.load(path)  # the weights read back from the store
        assert _nodes(got) == _nodes(want)
        assert [i.name for i in got.graph.input] == [i.name for i in want.graph.input]
        want_inits = {t.name: numpy_helper.to_array(t) for t in want.graph.initializer}
        got_inits = {t.name: numpy_helper.to_array(t) for t in got.graph.initializer}
        assert got_inits.keys() == want_inits.keys()
        for name, value in want_inits.items():
            assert got_inits[name].dtype == value.dtype and np.array_equal(got_inits[name], value), name


def test_no_graph_proto_of_a_build_carries_the_base_weights(tmp_path, monkeypatch):
    """Protobuf cannot serialize a message over 2 GB, so no step may serialize a graph with its weights.

    Every ModelProto the build serializes (onnx.save, ORT's gradient builder, ...) is
    measured on the way through; a 2 GB model takes the same path as this 8 MB one.
    """
    from tests.tiny_models import make_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "hf")
    make_tokenizer().save_pretrained(tmp_path / "hf")
    largest_tensor = 256 * 1024 * 4

    sizes = []
    serialize = onnx.ModelProto.SerializeToString

    def measured(self, **kwargs):
        data = serialize(self, **kwargs)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", measured)
    build_bundle(BuildConfig(str(tmp_path / "hf"), tmp_path / "bundle", targets="q_proj,v_proj"))
    monkeypatch.undo()
    assert (tmp_path / "bundle" / BASE_WEIGHTS).stat().st_size > 8 * largest_tensor
    assert len(sizes) >= 5 and max(sizes) < largest_tensor / 2, sorted(sizes)[-3:]


def test_weight_store_keeps_equal_tensors_once_and_aligns_large_ones(tmp_path):
    rng = np.random.default_rng(0)
    big, small = rng.standard_normal((128, 256), np.float32), rng.standard_normal(300, np.float32)
    store = WeightStore(tmp_path / STAGING_WEIGHTS)
    graph = onnx.helper.make_graph(
        [],
        "g",
        [],
        [],
        initializer=[
            numpy_helper.from_array(small, "small"),
            numpy_helper.from_array(big, "big"),
            numpy_helper.from_array(big.copy(), "big_again"),
            numpy_helper.from_array(np.ones(4, np.float32), "tiny"),
        ],
    )
    model = onnx.helper.make_model(graph)
    store.externalize(model, keep={"small"})
    store.close()
    assert [t.data_location for t in model.graph.initializer] == [0, 1, 1, 0]  # 1 = EXTERNAL
    share_base_weights({tmp_path / "m.onnx": model}, tmp_path)
    offsets = {t.name: int(t.external_data[1].value) for t in model.graph.initializer if t.external_data}
    assert offsets["big"] == offsets["big_again"] and offsets["big"] % PAGE == 0
    assert (tmp_path / BASE_WEIGHTS).stat().st_size < big.nbytes + small.nbytes + PAGE
    back = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "m.onnx").graph.initializer}
    assert np.array_equal(back["big_again"], big) and np.array_equal(back["small"], small)
