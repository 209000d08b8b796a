"""Training artifacts from the LoRA training graph, via onnxruntime.training.artifacts.

Only adapter tensors are trainable. Base weights are neither trainable nor listed as
frozen parameters: they stay graph initializers (later moved to the shared weights
file), so the checkpoint holds only the adapter — O(adapter), not O(model).
"""

from pathlib import Path

import onnx
import onnxruntime
from onnxruntime.training import artifacts

from edgetune.common.errors import EdgetuneError
from edgetune.common.names import OPTIMIZER_MODEL

OPTIMIZERS = {"adamw": artifacts.OptimType.AdamW, "sgd": artifacts.OptimType.SGD}
TORCH_ADAMW_MODE = 0  # ORT's AdamWOptimizer: 0 = torch.optim.AdamW, 1 = transformers' AdamW


def generate_training_artifacts(
    model: onnx.ModelProto, trainable: list[str], optimizer: str, out_dir: Path
) -> None:
    """Write training/eval/optimizer models and the checkpoint into `out_dir`."""
    if optimizer not in OPTIMIZERS:
        raise EdgetuneError(f"unknown optimizer '{optimizer}' (choose: {', '.join(OPTIMIZERS)})")
    onnxruntime.set_default_logger_severity(3)  # the gradient builder logs every pass at INFO
    artifacts.generate_artifacts(
        model,
        requires_grad=trainable,
        frozen_params=[],
        loss=None,  # the causal-LM loss is already part of the graph
        optimizer=OPTIMIZERS[optimizer],
        artifact_directory=out_dir,
    )
    _use_torch_adamw(out_dir / OPTIMIZER_MODEL)  # ORT already turns Dropout off in the eval model


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

