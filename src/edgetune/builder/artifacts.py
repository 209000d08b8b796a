"""Training artifacts from the LoRA training graph, via onnxruntime.training.artifacts.

Only adapter tensors are trainable. Adapter tensors that do not train (FFA-LoRA's A, the
base deltas of FedEx-LoRA) are ORT frozen parameters, so they live in the checkpoint where
the runtime reads and sets them. Base weights are neither trainable nor listed as
frozen parameters: they stay graph initializers (external data, later moved to the
shared weights file), so the checkpoint holds only the adapter — O(adapter), not O(model).

While ORT builds the gradient graph it serializes the model several times and cannot
resolve external data; the base weights are lifted out as plain graph inputs for that
step and put back afterwards, so ORT only ever sees the graph's structure.
"""

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import onnx
from onnxruntime.training import artifacts

from edgetune.common.names import EVAL_MODEL, OPTIMIZER_MODEL, TRAINING_MODEL

LIFT_MIN_BYTES = 1024

OPTIMIZERS = {"adamw": artifacts.OptimType.AdamW, "sgd": artifacts.OptimType.SGD}
TORCH_ADAMW_MODE = 0  # ORT's AdamWOptimizer: 0 = torch.optim.AdamW, 1 = transformers' AdamW


def generate_training_artifacts(
    model: onnx.ModelProto, trainable: list[str], frozen: list[str], optimizer: str, out_dir: Path
) -> dict[Path, onnx.ModelProto]:
    """Write the optimizer model and the checkpoint into `out_dir`; return the training and eval models.

    The two models come back by their paths in `out_dir`, with the base weights as
    initializers again, for the caller to save once (see `weights.share_base_weights`).
    """
    lifted = _lift_weights(model, keep=set(trainable) | set(frozen))
    with _native_log_captured():
        artifacts.generate_artifacts(
            model,
            requires_grad=trainable,
            frozen_params=frozen,
            loss=None,  # the causal-LM loss is already part of the graph
            optimizer=OPTIMIZERS[optimizer],
            artifact_directory=out_dir,
        )
    models = {out_dir / name: _restored(out_dir / name, lifted) for name in (TRAINING_MODEL, EVAL_MODEL)}
    _use_torch_adamw(out_dir / OPTIMIZER_MODEL)  # ORT already turns Dropout off in the eval model
    return models


@contextlib.contextmanager
def _native_log_captured():
    """Hold back the C++ log on fd 2 (ORT's gradient builder logs every pass at INFO,
    whatever the Python-side severity); replay it only if the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-20000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _lift_weights(model: onnx.ModelProto, keep: set[str]) -> dict[str, onnx.TensorProto]:
    """Move external and large non-trainable initializers out of `model` into graph inputs; return them."""
    graph = model.graph
    lifted = {
        t.name: t
        for t in graph.initializer
        if t.name not in keep and (t.data_location == onnx.TensorProto.EXTERNAL or len(t.raw_data) >= LIFT_MIN_BYTES)
    }
    kept = [t for t in graph.initializer if t.name not in lifted]
    for tensor in lifted.values():
        graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return lifted


def _restored(path: Path, lifted: dict[str, onnx.TensorProto]) -> onnx.ModelProto:
    """A generated model with its lifted graph inputs turned back into initializers."""
    model = onnx.load(path)
    graph = model.graph
    used = [i.name for i in graph.input if i.name in lifted]
    inputs = [i for i in graph.input if i.name not in lifted]
    del graph.input[:]
    graph.input.extend(inputs)
    graph.initializer.extend(lifted[name] for name in used)
    return model


def _use_torch_adamw(path: Path) -> None:
    """Make AdamW follow torch.optim.AdamW (eps outside the bias correction), like PEFT users expect."""
    model = onnx.load(path)
    for node in model.graph.node:
        if node.op_type == "AdamWOptimizer":
            for attr in node.attribute:
                if attr.name == "adam_mode":
                    attr.i = TORCH_ADAMW_MODE
                elif attr.name == "epsilon":
                    attr.f = 1e-8
    onnx.save(model, path)
