""".onnx_adapter export: our flatbuffer writer against ORT's, and the latest onnxruntime's logits against PEFT."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgetune.common.errors import AdapterError, EdgetuneError
from edgetune.common.manifest import read_manifest
from edgetune.common.names import LORA_SCALING
from edgetune.exporters import export
from edgetune.exporters.onnx_adapter import decode_adapter, encode_adapter
from edgetune.exporters.serving import MODEL, lora_inputs
from tests.exporters.conftest import write_random_adapter
from tests.parity import inference_logits, peft_model
from tests.peers import peer_run
from tests.tiny_models import ARCHS

ROOT = Path(__file__).resolve().parents[2]


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    params = {"x.lora_A.weight": rng.standard_normal((5, 3)), "x.lora_B.weight": rng.standard_normal((3, 7))}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    data = encode_adapter(params)
    assert data[4:8] == b"TORT"
    header, back = decode_adapter(data)
    assert header == {"format_version": 1, "adapter_version": 1, "model_version": 1}
    assert list(back) == list(params)
    for key, value in params.items():
        np.testing.assert_array_equal(back[key], value)
    with pytest.raises(EdgetuneError, match=r"x\.onnx_adapter: not an \.onnx_adapter file"):
        decode_adapter(data[:4] + b"GGUF" + data[8:], "x.onnx_adapter")
    for damaged in (b"\xff\xff\xff\x7f" + data[4:], data[:40]):
        with pytest.raises(EdgetuneError, match=r"x\.onnx_adapter: a damaged \.onnx_adapter file"):
            decode_adapter(damaged, "x.onnx_adapter")


def test_adapter_holds_graph_layout_with_the_scale_in_b(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama", use_rslora=True, rank=4)
    weights = write_random_adapter(bundle, tmp_path / "adapter")
    export(bundle, tmp_path / "adapter", "onnx-adapter", tmp_path / "a.onnx_adapter")
    _, params = decode_adapter((tmp_path / "a.onnx_adapter").read_bytes())
    assert set(params) == set(weights)
    scale = 16 / np.sqrt(4)
    for key, value in weights.items():
        expected = value.T * (scale if ".lora_B." in key else 1)  # Aᵀ (in, r), s·Bᵀ (r, out)
        np.testing.assert_allclose(params[key], expected, rtol=1e-6, atol=0)


def test_refuses_dora_and_a_missing_adapter(tiny_bundle, tmp_path):
    with pytest.raises(EdgetuneError, match="give --adapter"):
        export(tiny_bundle("llama"), None, "onnx-adapter", tmp_path / "a.onnx_adapter")
    dora = tiny_bundle("llama", method="dora")
    write_random_adapter(dora, tmp_path / "dora")
    with pytest.raises(AdapterError, match=r"DoRA adapter cannot be written as \.onnx_adapter"):
        export(dora, tmp_path / "dora", "onnx-adapter", tmp_path / "a.onnx_adapter")
    with pytest.raises(EdgetuneError, match="magnitude vectors: give --adapter to fold it in"):
        export(dora, None, "genai", tmp_path / "genai")
    assert not list(tmp_path.glob("a.onnx_adapter*")) and not (tmp_path / "genai").exists()


def test_serving_graph_defaults_are_the_base_model_on_ort_1_19(tiny_bundle, tmp_path):
    """Rank-1 zero defaults run on our ORT 1.19.2; feeding an adapter's arrays gives the bundle's adapted logits."""
    bundle = tiny_bundle("llama")
    manifest = read_manifest(bundle)
    weights = write_random_adapter(bundle, tmp_path / "adapter")
    export(bundle, None, "genai", tmp_path / "genai")
    model = onnx.load(tmp_path / "genai" / MODEL, load_external_data=False)
    assert len(lora_inputs(model)) == 2 * len(manifest["adapted_modules"])
    assert LORA_SCALING not in {i.name for i in model.graph.input}
    ids = np.random.default_rng(0).integers(3, 300, (2, 9)).astype(np.int64)
    zero = {k: np.zeros_like(v) for k, v in weights.items()}
    np.testing.assert_allclose(prefill_logits_of(tmp_path / "genai", ids), inference_logits(bundle, ids, zero, 1.0))
    export(bundle, tmp_path / "adapter", "onnx-adapter", tmp_path / "a.onnx_adapter")
    _, params = decode_adapter((tmp_path / "a.onnx_adapter").read_bytes())
    adapted = prefill_logits_of(tmp_path / "genai", ids, params)
    np.testing.assert_allclose(adapted, inference_logits(bundle, ids, weights, 2.0), atol=1e-5, rtol=0)


def prefill_logits_of(folder: Path, ids: np.ndarray, feeds: dict | None = None) -> np.ndarray:
    """Logits (B, S, V) of folder/model.onnx on ORT 1.19.2, with extra feeds overriding the LoRA defaults."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ORT warns about every input with a default initializer
    sess = ort.InferenceSession(str(folder / MODEL), options, providers=["CPUExecutionProvider"])
    b, s = ids.shape
    inputs = {i.name: i for i in [*sess.get_inputs(), *sess.get_overridable_initializers()]}
    run = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.tile(np.arange(s), (b, 1))}
    for name, spec in inputs.items():
        if name.startswith("past_key_values."):
            run[name] = np.zeros((b, spec.shape[1], 0, spec.shape[3]), np.float32)
    run.update(feeds or {})
    return sess.run(["logits"], {k: v for k, v in run.items() if k in inputs})[0]


@pytest.mark.slow
def test_latest_onnxruntime_reads_our_file_and_writes_the_same_one(tiny_bundle, tmp_path):
    """ORT's AdapterFormat reads our file back, and writes the same parameters in the same order.

    Its writer ignores the schema's `force_align: 8` on raw_data; ours keeps it, so the files
    differ only in padding (a few bytes per parameter).
    """
    bundle = tiny_bundle("phi3")
    write_random_adapter(bundle, tmp_path / "adapter")
    export(bundle, tmp_path / "adapter", "onnx-adapter", tmp_path / "ours.onnx_adapter")
    ours = (tmp_path / "ours.onnx_adapter").read_bytes()
    header, params = decode_adapter(ours)
    code = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "read = ort.AdapterFormat.read_adapter(sys.argv[1])\n"
        "params = {k: v.numpy() for k, v in read.get_parameters().items()}\n"
        "np.savez(sys.argv[2], **params)\n"
        "f = ort.AdapterFormat(); f.set_adapter_version(1); f.set_model_version(1)\n"
        "f.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(params[k]) for k in sys.argv[4].split(',')})\n"
        "f.export_adapter(sys.argv[3])\n"
        "print(read.get_format_version(), read.get_adapter_version(), read.get_model_version())\n"
    )
    args = ["-c", code, tmp_path / "ours.onnx_adapter", tmp_path / "read.npz", tmp_path / "theirs.onnx_adapter"]
    versions = peer_run("ort", [*args, ",".join(params)]).stdout.split()
    assert versions == ["1", "1", "1"]
    read = dict(np.load(tmp_path / "read.npz"))
    assert set(read) == set(params)
    for key, value in params.items():
        np.testing.assert_array_equal(read[key], value)
    theirs = (tmp_path / "theirs.onnx_adapter").read_bytes()
    their_header, their_params = decode_adapter(theirs)
    assert their_header == header and list(their_params) == list(params)
    assert 0 <= len(ours) - len(theirs) <= 8 * len(params)
    for key, value in params.items():
        np.testing.assert_array_equal(their_params[key], value)
        offset = ours.find(value.tobytes())
        assert offset > 0 and offset % 8 == 0, f"{key}: raw_data not 8-byte aligned"


def ort_latest_logits(model: Path, adapter: Path, ids: np.ndarray, tmp_path: Path) -> dict[str, np.ndarray]:
    """(base, adapted) logits from the latest onnxruntime with LoraAdapter + add_active_adapter."""
    np.save(tmp_path / "ids.npy", ids)
    args = [ROOT / "scripts/peer_checks/ort_lora_logits.py", model, adapter, tmp_path / "ids.npy", tmp_path / "out.npz"]
    peer_run("ort", args)
    return dict(np.load(tmp_path / "out.npz"))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_latest_onnxruntime_lora_adapter_matches_peft(arch, tiny_bundle, tiny_model_dir, tmp_path):
    lora = {"use_rslora": True, "rank": 4} if arch == "llama" else {}
    bundle = tiny_bundle(arch, **lora)
    manifest = read_manifest(bundle)
    weights = write_random_adapter(bundle, tmp_path / "adapter")
    export(bundle, None, "genai", tmp_path / "serving")
    export(bundle, tmp_path / "adapter", "onnx-adapter", tmp_path / "a.onnx_adapter")
    ids = np.random.default_rng(0).integers(3, 300, (2, 9)).astype(np.int64)
    got = ort_latest_logits(tmp_path / "serving" / MODEL, tmp_path / "a.onnx_adapter", ids, tmp_path)
    with torch.no_grad():
        peft = peft_model(tiny_model_dir(arch), manifest, weights)
        ref = peft(torch.from_numpy(ids)).logits.numpy()
        with peft.disable_adapter():
            ref_base = peft(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(got["adapted"], ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["base"], ref_base, atol=1e-4, rtol=0)
    assert np.abs(ref - ref_base).max() > 1e-2, "the adapter should move the logits"
