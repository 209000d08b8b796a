"""`edgetune merge`: the folded model matches the unmerged adapter, PEFT, and plain onnxruntime."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgetune.common.bundle import open_bundle
from edgetune.common.errors import EdgetuneError
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import config_scaling, save_adapter
from edgetune.runtime.merge import MERGED_MODEL, merge
from tests.parity import inference_logits, peft_model, prefill_logits, random_adapter
from tests.peers import peer_run

ROOT = Path(__file__).resolve().parents[2]
OPTIMUM_INPUTS = {"input_ids", "attention_mask", "position_ids"}


def _merged(arch, tiny_bundle, tmp_path):
    bundle = tiny_bundle(arch)
    manifest = read_manifest(bundle)
    adapter = random_adapter(bundle, seed=7)
    save_adapter(tmp_path / "adapter", adapter, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    merge(bundle, tmp_path / "adapter", tmp_path / "merged")
    return bundle, manifest, adapter, tmp_path / "merged"


@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt2"])
def test_merged_matches_unmerged_and_peft(arch, tiny_bundle, tiny_model_dir, tmp_path):
    bundle, manifest, adapter, merged = _merged(arch, tiny_bundle, tmp_path)
    ids = np.random.default_rng(0).integers(3, 300, (2, 9)).astype(np.int64)
    ours = prefill_logits(merged, ids)
    unmerged = inference_logits(bundle, ids, adapter, config_scaling(manifest["adapter_config"]))
    with torch.no_grad():
        ref = peft_model(tiny_model_dir(arch), manifest, adapter)(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(ours, unmerged, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_an_int8_merge_stays_within_int8_serving_bounds_of_the_float_merge(arch, tiny_bundle, tmp_path):
    """--quant int8: every weight product on int8 weights (none left over a float constant), a quarter of the
    float weight bytes, logits within the int8 serving bound (0.05, tiny logits' std about 0.16) of the
    float merge's, and the same Optimum names, so the Generator and the plain package run it."""
    bundle, _, _, merged = _merged(arch, tiny_bundle, tmp_path)
    merge(bundle, tmp_path / "adapter", tmp_path / "int8", quant="int8")
    ids = np.random.default_rng(1).integers(3, 300, (2, 9)).astype(np.int64)
    assert np.abs(prefill_logits(tmp_path / "int8", ids) - prefill_logits(merged, ids)).max() < 0.05
    graph = onnx.load(tmp_path / "int8" / MERGED_MODEL, load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in constants]
    assert any(n.op_type in ("DynamicQuantizeMatMul", "MatMulInteger") for n in graph.node)
    assert read_manifest(tmp_path / "int8")["quant"] == "int8" and "quant" not in read_manifest(merged)
    float_size, int8_size = ((d / "model.onnx_data").stat().st_size for d in (merged, tmp_path / "int8"))
    assert int8_size < 0.5 * float_size  # int8 Linears; the float embedding stays
    with pytest.raises(EdgetuneError, match="--quant"):
        merge(bundle, tmp_path / "adapter", tmp_path / "int4", quant="int4")
    assert not (tmp_path / "int4").exists()


def test_merged_keeps_optimum_names_and_a_manifest(tiny_bundle, tmp_path):
    _, _, _, merged = _merged("llama", tiny_bundle, tmp_path)
    graph = onnx.load(merged / MERGED_MODEL, load_external_data=False).graph
    inputs, outputs = {i.name for i in graph.input}, [o.name for o in graph.output]
    assert inputs == OPTIMUM_INPUTS | {f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")}
    assert outputs == ["logits"] + [f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert not any(n.name.startswith("/lora/") for n in graph.node)
    opened = open_bundle(merged)
    assert opened.kind == "merged" and "tokenizer.json" in opened.files


@pytest.mark.slow
def test_merged_runs_on_the_plain_onnxruntime_package(tiny_bundle, tmp_path):
    """Apps embed the inference package, not the training build: prove the folder runs there."""
    _, _, _, merged = _merged("llama", tiny_bundle, tmp_path)
    ids = ["5", "17", "42", "8"]
    plain = peer_run("ort", [ROOT / "scripts/run_merged.py", merged, *ids, "--new", "6"], cwd=tmp_path)
    ours = subprocess.run(
        [sys.executable, str(ROOT / "scripts/run_merged.py"), str(merged), *ids, "--new", "6"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    plain, ours = json.loads(plain.stdout), json.loads(ours.stdout)
    assert plain["onnxruntime"] != "1.19.2"  # really the other package
    assert plain["tokens"] == ours["tokens"]
    np.testing.assert_allclose(plain["first_logits"], ours["first_logits"], atol=1e-4)
