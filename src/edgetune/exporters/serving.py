"""The serving graph that ORT >= 1.20 adapters and onnxruntime-genai pair with, made from a bundle's inference.onnx.

The bundle's inference graph takes every LoRA tensor and `lora_scaling` as required inputs
(edgetune feeds them on each run). ORT's multi-LoRA API instead overrides graph inputs
that have a same-named default initializer, so this graph:
- gives each LoRA input (PEFT's key, graph layout Aᵀ (in, r) / Bᵀ (r, out)) a default of
  zeros with rank 1: no adapter means the base model. A rank-0 default crashes ORT 1.19.2;
  rank 1 runs everywhere;
- turns `lora_scaling` into a constant 1, since adapters for it carry the scale folded
  into B (an .onnx_adapter stores no alpha).
Input and output names stay Optimum's (input_ids, attention_mask, position_ids,
past_key_values.N.key/value -> logits, present.N.key/value), which are genai's defaults.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgetune.common import names
from edgetune.common.errors import EdgetuneError
from edgetune.common.peft import PEFT_PREFIX, lora_keys
from edgetune.exporters.source import ExportSource

MODEL = "model.onnx"
MODEL_DATA = "model.onnx.data"
DEFAULT_RANK = 1


def serving_graph(source: ExportSource) -> onnx.ModelProto:
    """The bundle's inference graph with zero rank-1 LoRA defaults and the scale fixed at 1 (weights loaded)."""
    if source.manifest["adapter_config"].get("use_dora"):
        raise EdgetuneError(
            f"{source.bundle}: a DoRA bundle's serving graph needs its magnitude vectors: give --adapter to fold it in"
        )
    model = onnx.load(source.file(names.INFERENCE_MODEL))  # base weights come in from base_weights.bin
    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    for path in source.modules:
        for key in lora_keys(path):
            dims = [
                d.dim_value if d.HasField("dim_value") else DEFAULT_RANK for d in inputs[key].type.tensor_type.shape.dim
            ]
            graph.initializer.append(numpy_helper.from_array(np.zeros(dims, np.float32), key))  # (in, 1) / (1, out)
    kept = [i for i in graph.input if i.name != names.LORA_SCALING]
    del graph.input[:]
    graph.input.extend(kept)
    graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), names.LORA_SCALING))
    return model


def merged_graph(source: ExportSource) -> onnx.ModelProto:
    """The bundle's inference graph with the adapter (and any base deltas) folded in, as `edgetune merge`."""
    from edgetune.runtime.merge import fold_adapter

    model = onnx.load(source.file(names.INFERENCE_MODEL))
    fold_adapter(model, source.weights | (source.deltas or {}), source.adapter_config, source.modules)
    return model


def save_model(model: onnx.ModelProto, folder: Path) -> None:
    """Save `model` as folder/model.onnx with its weights in model.onnx.data."""
    onnx.checker.check_model(model)
    onnx.save(
        model,
        Path(folder) / MODEL,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=MODEL_DATA,
        size_threshold=1024,
    )


def lora_inputs(model: onnx.ModelProto) -> list[str]:
    """The graph inputs an adapter may override (PEFT keys with a default)."""
    defaults = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name.startswith(PEFT_PREFIX) and i.name in defaults]
