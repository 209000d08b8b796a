"""int8 weights for a float ONNX model, by ONNX Runtime's own `quantize_dynamic`.

Every MatMul and Gemm over a constant float weight gets int8 weights per output channel
(symmetric); its activations are quantized as it runs, one scale per tensor. Embeddings,
attention's own products, norms and softmax stay float. Used for encoder prediction
(`predict_graph`) and `edgetune merge --quant int8` (`merge`).
"""

import logging
from pathlib import Path


def quantize_weights_int8(model: Path, out: Path) -> Path:
    """Write `model` with int8 weights per output channel in every MatMul/Gemm over a constant to `out`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its advice to run its pre-processing script first
    try:
        quantize_dynamic(
            model,
            out,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],  # a Gemm becomes MatMul + Add first
            extra_options={"MatMulConstBOnly": True},  # attention's own products stay float
            use_external_data_format=True,  # beside `out`, as `out.name + ".data"`: models over 2 GB too
        )
    finally:
        logging.getLogger().setLevel(quiet)
    return out
