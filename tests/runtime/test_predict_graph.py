"""The prediction graph (adapter folded in, fp32 or int8) against the bundle's graph fed the adapter."""

import numpy as np
import onnxruntime as ort
import pytest

from edgetune.common.manifest import read_manifest
from edgetune.common.names import LORA_SCALING
from edgetune.common.peft import config_scaling, save_adapter, to_graph_layout
from edgetune.runtime.predict import EncoderPredictor
from tests.builder.test_encoder_parity import encoder_batch, random_encoder_adapter
from tests.tiny_encoders import ENCODERS

FP32_TOLERANCE = 1e-5  # float rounding of W + s·Aᵀ·Bᵀ summed once instead of per product
INT8_TOLERANCE = 0.06  # of the largest |logit|, int8 weights and activations: tiny random models measured up to 0.051
# (electra, whose classification head runs as Gemms, int8 too since they are quantized like MatMuls; 0.03 before)


def _outputs(bundle, method_adapter, feeds, tmp_path, precision):
    """(the bundle's graph fed the adapter, the predictor's folded graph) outputs on `feeds`."""
    manifest = read_manifest(bundle)
    save_adapter(tmp_path / "adapter", method_adapter, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    plain = ort.InferenceSession(str(bundle / "inference.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in plain.get_inputs()}
    scale = np.array(config_scaling(manifest["adapter_config"]), np.float32)
    reference = plain.run(
        None, {k: v for k, v in feeds.items() if k in inputs} | to_graph_layout(method_adapter) | {LORA_SCALING: scale}
    )
    predictor = EncoderPredictor(bundle, tmp_path / "adapter", precision=precision)
    assert set(predictor.inputs) <= {"input_ids", "attention_mask", "token_type_ids"}  # LoRA and head are constants
    ours = predictor.session.run(None, {k: feeds[k] for k in predictor.inputs})
    return reference, ours


@pytest.mark.parametrize("arch", ENCODERS)
@pytest.mark.parametrize("task", ["text-classification", "token-classification"])
def test_fp32_and_int8_prediction_match_the_bundle_graph(arch, task, encoder_bundle, tmp_path):
    bundle = encoder_bundle(arch, task)
    feeds = encoder_batch(task, len(read_manifest(bundle)["labels"]))
    adapter = random_encoder_adapter(bundle)
    for precision, tolerance in (("fp32", FP32_TOLERANCE), ("int8", INT8_TOLERANCE)):
        reference, ours = _outputs(bundle, adapter, feeds, tmp_path / precision, precision)
        for r, o in zip(reference, ours):
            bound = tolerance * (1 if precision == "fp32" else np.abs(r).max())
            np.testing.assert_allclose(o, r, atol=bound, rtol=0, err_msg=f"{arch} {task} {precision}")


@pytest.mark.parametrize("method, kwargs", [("dora", {}), ("qlora", {"quant": "int8"})])
def test_dora_and_qlora_fold_into_the_fp32_prediction_graph(method, kwargs, encoder_bundle, tmp_path):
    bundle = encoder_bundle("bert", "question-answering", method=method, **kwargs)
    feeds = encoder_batch("question-answering", 0)
    reference, ours = _outputs(bundle, random_encoder_adapter(bundle), feeds, tmp_path, "fp32")
    for r, o in zip(reference, ours):  # start and end logits
        np.testing.assert_allclose(o, r, atol=FP32_TOLERANCE, rtol=0)


def test_an_unknown_precision_is_refused(encoder_bundle):
    with pytest.raises(ValueError, match="precision must be one of int8, fp32"):
        EncoderPredictor(encoder_bundle("bert", "text-classification"), precision="bf16")
