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
from edgetune.runtime.merge import LOW_RANK_PREFIX, MERGED_MODEL, merge
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


@pytest.mark.parametrize("arch,quant,bound", [("llama", "int8", 0.05), ("gpt2", "int8", 0.05), ("llama", "int4", 0.1)])
def test_a_quantized_merge_stays_within_serving_bounds_of_the_float_merge(arch, quant, bound, tiny_bundle, tmp_path):
    """--quant int8|int4: every base weight product on quantized weights (only the adapter's rank-r products
    stay float), at most half the float weight bytes, logits within the serving bound of the float merge's
    (tiny logits' std about 0.16), each row's logits the same whatever it is batched with (activations are
    quantized per row, as in the serving graph, not per tensor), and the same Optimum names."""
    bundle, _, _, merged = _merged(arch, tiny_bundle, tmp_path)
    merge(bundle, tmp_path / "adapter", tmp_path / quant, quant=quant)
    ids = np.random.default_rng(1).integers(3, 300, (2, 9)).astype(np.int64)
    quant_logits = prefill_logits(tmp_path / quant, ids)
    assert np.abs(quant_logits - prefill_logits(merged, ids)).max() < bound
    loud = ids.copy()
    loud[1] = ids[1, ::-1]  # another row beside row 0: a per-tensor scale would change row 0's numbers
    np.testing.assert_array_equal(prefill_logits(tmp_path / quant, loud)[0], quant_logits[0])
    np.testing.assert_array_equal(prefill_logits(tmp_path / quant, ids[:1])[0], quant_logits[0])
    linears = len(_weight_products(merged))  # every Linear, the LM head last
    left_float = _weight_products(tmp_path / quant)  # the adapter's products, and int4's block-sum shares
    assert left_float and all(n.startswith((LOW_RANK_PREFIX, "/merge/int4/")) for n in left_float)
    ops = [n.op_type for n in onnx.load(tmp_path / quant / MERGED_MODEL, load_external_data=False).graph.node]
    assert "DynamicQuantizeMatMul" not in ops
    assert ops.count("MatMulIntegerToFloat") == (1 if quant == "int4" else linears)  # int4's LM head is int8
    assert ops.count("MatMulNBits") == (linears - 1 if quant == "int4" else 0)
    assert read_manifest(tmp_path / quant)["quant"] == quant and "quant" not in read_manifest(merged)
    float_size, quant_size = ((d / "model.onnx_data").stat().st_size for d in (merged, tmp_path / quant))
    linear_bytes, low_rank_bytes = _constant_bytes(merged, ""), _constant_bytes(tmp_path / quant, LOW_RANK_PREFIX)
    assert quant_size < float_size - 0.7 * linear_bytes + low_rank_bytes  # int8 keeps 1/4 of a Linear, int4 1/8
    with pytest.raises(EdgetuneError, match="--quant"):
        merge(bundle, tmp_path / "adapter", tmp_path / "int2", quant="int2")
    assert not (tmp_path / "int2").exists()


def _constant_bytes(folder: Path, prefix: str) -> int:
    """The bytes of the float weights read by a merged model's MatMul and Gemm nodes named `prefix`..."""
    graph = onnx.load(folder / MERGED_MODEL).graph
    weights = {t.name: t for t in graph.initializer}
    products = [n for n in graph.node if n.name in _weight_products(folder) and n.name.startswith(prefix)]
    return sum(onnx.numpy_helper.to_array(weights[n.input[1]]).nbytes for n in products)


def _weight_products(folder: Path) -> list[str]:
    """The names of a merged model's MatMul and Gemm nodes over a float constant."""
    graph = onnx.load(folder / MERGED_MODEL, load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in constants]


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
@pytest.mark.parametrize("quant", [None, "int8", "int4"])
def test_merged_runs_on_the_plain_onnxruntime_package(quant, tiny_bundle, tmp_path):
    """Apps embed the inference package, not the training build: prove the folder runs there, quantized too."""
    bundle, _, _, merged = _merged("llama", tiny_bundle, tmp_path)
    if quant:
        merge(bundle, tmp_path / "adapter", tmp_path / quant, quant=quant)
        merged = tmp_path / quant
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
