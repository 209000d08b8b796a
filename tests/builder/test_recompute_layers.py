"""Gradient checkpointing: each layer's backward reads a copy of the layer made when it is needed.

The loss and every adapter gradient must equal those of the bundle without it; the copy
must survive ORT's own optimizations and run only once the backward pass reaches its layer.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgetune.builder.rewrites.recompute.layers import SUFFIX
from edgetune.common.manifest import read_manifest
from edgetune.common.names import CHECKPOINT, TRAINING_MODEL
from tests.parity import ort_training, random_adapter, training_step
from tests.tiny_models import ALL_ARCHS

LAYERS = 2  # every tiny model


def _loss_and_gradients(bundle, adapter) -> tuple[float, dict[str, np.ndarray]]:
    state, module, _ = ort_training(bundle, adapter)
    rng = np.random.default_rng(3)
    ids = rng.integers(3, 100, (2, 12)).astype(np.int64)
    labels = np.roll(ids, -1, axis=1)
    labels[:, :6] = -100
    loss = float(training_step(module, ids, labels))
    return loss, {name: parameter.grad.copy() for name, parameter in state.parameters}


def _same_training_step(plain, checkpointed) -> None:
    adapter = random_adapter(plain)
    loss, grads = _loss_and_gradients(plain, adapter)
    loss_ckpt, grads_ckpt = _loss_and_gradients(checkpointed, adapter)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        assert np.abs(grads[name]).max() > 0, name
        np.testing.assert_allclose(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_same_loss_and_gradients_as_without(arch, method_bundle):
    plain = method_bundle(arch, "lora")
    checkpointed = method_bundle(arch, "lora", gradient_checkpointing=True)
    assert read_manifest(checkpointed)["gradient_checkpointing"] and not read_manifest(plain)["gradient_checkpointing"]
    _same_training_step(plain, checkpointed)


@pytest.mark.parametrize("method, quant", [("dora", None), ("qlora", "int8"), ("qlora", "int4")])
def test_same_loss_and_gradients_with_each_method(method, quant, method_bundle):
    kwargs = {"quant": quant} if quant else {}
    plain = method_bundle("llama", method, gradient_checkpointing=False, **kwargs)
    checkpointed = method_bundle("llama", method, gradient_checkpointing=method == "dora" or None, **kwargs)
    assert read_manifest(checkpointed)["gradient_checkpointing"]  # qlora's default
    _same_training_step(plain, checkpointed)


def test_dropout_is_kept_not_redrawn(method_bundle):
    bundle = method_bundle("llama", "lora", dropout=0.1, gradient_checkpointing=True)
    graph = onnx.load(bundle / TRAINING_MODEL, load_external_data=False).graph
    dropouts = [n for n in graph.node if "Dropout" in n.op_type]
    assert dropouts and not any(n.name.endswith(SUFFIX) for n in dropouts)
    copied_inputs = {name for n in graph.node if n.name.endswith(SUFFIX) for name in n.input}
    assert copied_inputs & {n.output[0] for n in dropouts}  # the copies read the forward's draw
    loss, _ = _loss_and_gradients(bundle, random_adapter(bundle))
    assert np.isfinite(loss)


def test_ort_runs_each_copy_once_the_backward_pass_reaches_its_layer(method_bundle, tmp_path):
    from edgetune.runtime.ort_training import CheckpointState, Module

    bundle = method_bundle("llama", "lora", gradient_checkpointing=True)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    Module(
        str(bundle / TRAINING_MODEL),
        CheckpointState.load_checkpoint(str(bundle / CHECKPOINT)),
        None,
        session_options=options,
    )
    graph = onnx.load(tmp_path / "optimized.onnx", load_external_data=False).graph  # execution order
    position = {out: i for i, node in enumerate(graph.node) for out in node.output}
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    assert sum(n.name.endswith(SUFFIX) for n in softmaxes) == LAYERS  # not merged back into the forward
    for layer in range(LAYERS):
        anchor = next(n.input[0] for n in graph.node if n.name == f"/checkpoint/layers.{layer}/anchor_size")
        copies = [i for i, n in enumerate(graph.node) if n.name.endswith(SUFFIX) and f"layers.{layer}" in n.name]
        assert copies and min(copies) > position[anchor], layer
        later_layer_grads = [
            position[out] for out in position if out.endswith("_grad") and f"/layers.{layer + 1}/" in out
        ]
        assert not later_layer_grads or min(copies) > min(later_layer_grads)  # after the next layer's backward began
