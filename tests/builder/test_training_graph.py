"""The training graph: the LM head runs only on labelled positions, NaN guards are gone."""

import numpy as np
import onnx
import pytest

from edgetune.common.names import EVAL_MODEL, INFERENCE_MODEL, TRAINING_MODEL
from tests.parity import checkpoint_adapter, ort_training
from tests.tiny_models import ALL_ARCHS


def test_lm_head_reads_only_labelled_rows(tiny_bundle):
    graph = onnx.load(tiny_bundle("llama") / TRAINING_MODEL, load_external_data=False).graph
    producers = {out: node for node in graph.node for out in node.output}
    loss = producers["loss"]
    lm_head = producers[loss.input[0]]
    assert lm_head.op_type == "MatMul"
    gather = producers[lm_head.input[0]]
    assert gather.op_type == "Gather"
    assert producers[producers[gather.input[1]].input[1]].input[0] == "/loss/nonzero"  # Concat(row 0, labelled rows)


def test_loss_ignores_prompt_and_survives_an_unlabelled_batch(tiny_bundle):
    bundle = tiny_bundle("llama")
    _, module, _ = ort_training(bundle, checkpoint_adapter(bundle))
    ids = np.random.default_rng(0).integers(3, 100, (2, 8)).astype(np.int64)
    mask, positions = np.ones_like(ids), np.tile(np.arange(8), (2, 1))
    labels = np.roll(ids, -1, axis=1)
    labels[:, :5] = -100
    changed_prompt = ids.copy()
    changed_prompt[:, 0] = 99  # position 0 is unlabelled, but later positions attend to it
    full = float(module(ids, mask, positions, labels))
    assert np.isfinite(full) and full > 0
    assert float(module(changed_prompt, mask, positions, labels)) != full
    assert float(module(ids, mask, positions, np.full_like(ids, -100))) == 0.0


def test_only_the_training_graph_drops_the_softmax_nan_guards(tiny_bundle):
    def ops(name):
        graph = onnx.load(tiny_bundle("llama") / name, load_external_data=False).graph
        return [n.op_type for n in graph.node]

    layers = 2  # tiny llama
    assert "IsNaN" not in ops(TRAINING_MODEL) + ops(EVAL_MODEL)
    assert ops(INFERENCE_MODEL).count("IsNaN") == layers
    eval_graph = onnx.load(tiny_bundle("llama") / EVAL_MODEL, load_external_data=False).graph
    used = {name for node in eval_graph.node for name in node.input}
    assert all(n.output[0] in used for n in eval_graph.node if n.op_type == "Constant")  # ORT would warn


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_backward_reads_recomputed_attention_probs(arch, tiny_bundle):
    graph = onnx.load(tiny_bundle(arch) / TRAINING_MODEL, load_external_data=False).graph
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    copies = [n for n in softmaxes if n.name.endswith("/recompute")]
    assert copies and len(copies) * 2 == len(softmaxes)
    readers = {name: [n.op_type for n in graph.node if name in n.input] for name in [n.output[0] for n in softmaxes]}
    for original in (n for n in softmaxes if n not in copies):
        assert readers[original.output[0]] == ["MatMul"]  # the forward P·V only
