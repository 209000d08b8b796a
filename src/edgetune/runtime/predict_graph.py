"""An encoder bundle's prediction graph with one adapter folded in: fp32, or int8 weights.

The bundle's inference graph takes LoRA and the task head as inputs, so any adapter can be
fed without a rebuild; a predictor serves one adapter at a time, so this graph carries it
instead: the head tensors become constants and each LoRA branch is folded into its base
weight (`merge.fold_adapter`, DoRA and QLoRA included), which leaves the plain encoder.

int8 (the default of `EncoderPredictor`): every MatMul and Gemm over a constant float weight
is quantized by ONNX Runtime's `quantize_dynamic` (`int8_weights`), per output channel, symmetric int8
weights; activations are quantized as each product runs, one scale per tensor, so a row's
numbers depend slightly on its batchmates. Embeddings, attention's own products, norms and
softmax stay float. fp32 gives the same logits as the bundle's graph fed the adapter
(within float rounding). Measurements: benchmarks/ENCODERS.md.
"""

import platform
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import numpy_helper

from edgetune.common.errors import BundleError
from edgetune.common.names import INFERENCE_MODEL
from edgetune.common.peft import MAGNITUDE, to_peft_layout
from edgetune.runtime.int8_weights import quantize_weights_int8
from edgetune.runtime.merge import fold_adapter
from edgetune.runtime.ort_errors import ORT_ERRORS, gist
from edgetune.runtime.ort_inference import default_session_options
from edgetune.runtime.ort_training import cpu_flags, exact_int8_needs_u8u8

PRECISIONS = ("int8", "fp32")


def prediction_session(opened, weights: dict, config: dict, precision: str, options) -> ort.InferenceSession:
    """A session on the bundle's inference graph with `weights` (graph layout: LoRA, head) folded in.

    opened: an `open_bundle` result; precision: "fp32" or "int8" (see the module docstring).
    The graph goes through a temporary folder, so only one copy of the weights is in memory
    at a time besides ORT's own.
    """
    model = onnx.load(opened.path(INFERENCE_MODEL))  # base weights come in from base_weights.bin
    inputs = {i.name for i in model.graph.input}
    branch = {k for k in weights if ".lora_" in k or k.endswith(MAGNITUDE)}
    for key in sorted(set(weights) - branch):  # the head: graph inputs -> constants
        if key in inputs:
            model.graph.initializer.append(numpy_helper.from_array(weights[key], key))
    fold_adapter(model, to_peft_layout({k: weights[k] for k in branch}), config, opened.manifest["adapted_modules"])
    with tempfile.TemporaryDirectory(prefix="edgetune-predict-", ignore_cleanup_errors=True) as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, path, save_as_external_data=True, location="model.onnx_data", size_threshold=1024)
        del model
        if precision == "int8":
            path = quantize_weights_int8(path, Path(tmp) / "int8.onnx")
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except ORT_ERRORS as e:
            raise BundleError(f"{opened.path(INFERENCE_MODEL)}: ONNX Runtime cannot load it ({gist(e)})") from None


def prediction_session_options(precision: str) -> ort.SessionOptions:
    """The default inference options; for int8, exact products on x86 CPUs without VNNI (`exact_int8_needs_u8u8`)."""
    options = default_session_options()
    if precision == "int8" and exact_int8_needs_u8u8(platform.machine(), cpu_flags()):
        options.add_session_config_entry("session.x64quantprecision", "1")
    return options
