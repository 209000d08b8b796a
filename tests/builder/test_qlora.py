"""QLoRA bundles: an int8/int4 frozen base (every Linear and the embedding; the LM head int8), LoRA on top in fp32.

Tolerances measured on the tiny models (logits std ≈ 0.16-0.17, batch 4 x 32; the whole base is
quantized whatever the targets): int8 max |Δlogit| ≤ 0.0075, mean ≤ 0.0013 (≤ 0.0067 and 0.0010
with a float LM head); int4 (block 32 or 64) max ≤ 0.087, mean ≤ 0.011. The tests allow 2-3x that.
"""

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForCausalLM

from edgetune.builder.graph import module_path
from edgetune.builder.pipeline import build_bundle
from edgetune.builder.rewrites.quant.formats import dequantize, quantize_int4, quantize_int8
from edgetune.builder.rewrites.quant.lm_head import HEAD_CHUNKS, quantize_lm_head
from edgetune.builder.rewrites.quant.tensors import read_quantized
from edgetune.builder.weights import WeightFiles, WeightStore, external_region
from edgetune.common import names
from edgetune.common.errors import EdgetuneError
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import PEFT_PREFIX, config_scaling
from edgetune.options import BuildConfig
from tests.builder.peft_ref import batch, ids, ort_losses, peft_losses, peft_reference, perturbed_adapter
from tests.parity import checkpoint_adapter, inference_logits

TOLERANCE = {"int8": (0.02, 0.003), "int4": (0.25, 0.04)}  # (max, mean) |logit difference|


def _dequantized_model_dir(bundle, model_dir, out) -> str:
    """The source model with every weight the bundle quantized replaced by what its graphs compute.

    Saved untied: the embedding and the LM head are quantized separately (to equal values if tied).
    """
    graph = onnx.load(bundle / names.TRAINING_MODEL).graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    readers = {name: n.op_type for n in graph.node for name in n.input}
    fan_in_fan_out = read_manifest(bundle)["adapter_config"]["fan_in_fan_out"]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    params = dict(model.named_parameters())
    head_rows: dict[str, list] = {}  # LM head path -> its vocabulary chunks' float rows, in order
    for name in inits:
        if not (name.startswith("/quant/") and name.endswith("/q")):
            continue
        path = name[len("/quant/") : -len("/q")]
        tensors = read_quantized(inits, path)
        if "/vocab" in path:  # an LM head chunk: int8 rows (R, H)
            head, k = path.rsplit("/vocab", 1)
            head_rows.setdefault(head, []).append((int(k), tensors["q"].astype(np.float32) * tensors["scale"][:, None]))
            continue
        if readers[name] == "Gather":  # an embedding: int8 rows (V, H)
            w = tensors["q"].astype(np.float32) * tensors["scale"][:, None]
        else:
            hf_shape = tuple(params[f"{path}.weight"].shape)
            w = dequantize(tensors, hf_shape if fan_in_fan_out else hf_shape[::-1])  # (in, out)
            w = w if fan_in_fan_out else w.T
        with torch.no_grad():
            params[f"{path}.weight"].copy_(torch.from_numpy(np.ascontiguousarray(w)))
    for path, chunks in head_rows.items():
        with torch.no_grad():
            params[f"{path}.weight"].copy_(torch.from_numpy(np.concatenate([w for _, w in sorted(chunks)])))  # (V, H)
    model.save_pretrained(out)
    return out


@pytest.mark.parametrize("n_in", [256, 200])  # 200: the last block of each size is padded
@pytest.mark.parametrize("block_size", [32, 64, 128])
def test_quantizers_round_to_the_nearest_level(block_size, n_in):
    w = np.random.default_rng(0).standard_normal((n_in, 48)).astype(np.float32) * 0.02
    int8 = quantize_int8(w)
    assert int8["q"].dtype == np.int8 and int8["scale"].shape == (48,)
    assert np.all(np.abs(dequantize(int8, w.shape) - w) <= int8["scale"] / 2 + 1e-9)
    int4 = quantize_int4(w, block_size)
    per_out = -(-n_in // block_size)
    n_blocks = 48 * per_out
    assert int4["q"].dtype == np.uint8 and int4["q"].shape == (n_blocks, block_size) and int4["q"].max() <= 15
    assert int4["scale"].shape == (n_blocks,) and int4["offset"].shape == (n_blocks, 1)
    padded = np.pad(w.T, ((0, 0), (0, per_out * block_size - n_in)), mode="edge")  # (out, nb·bs)
    back = np.pad(dequantize(int4, w.shape).T, ((0, 0), (0, per_out * block_size - n_in)), mode="edge")
    err = np.abs(back - padded).reshape(n_blocks, block_size)  # (out·nb, bs)
    assert np.all(err <= int4["scale"][:, None] / 2 + 1e-7)
    blocks = padded.reshape(n_blocks, block_size)  # the padding leaves each block's range as it was
    np.testing.assert_array_equal(int4["offset"][:, 0], blocks.min(axis=1))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("quant,block_size", [("int8", 32), ("int4", 32), ("int4", 64), ("int4", 128)])
def test_qlora_logits_stay_close_to_fp32(arch, quant, block_size, method_bundle, tiny_model_dir):
    bundle = method_bundle(arch, "qlora", quant=quant, block_size=block_size)
    x = ids(batch=4, seq=32, seed=5)
    ours = inference_logits(
        bundle, x, checkpoint_adapter(bundle), config_scaling(read_manifest(bundle)["adapter_config"])
    )
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch)).eval()(torch.from_numpy(x)).logits.numpy()
    diff = np.abs(ours - ref)
    max_tol, mean_tol = TOLERANCE[quant]
    assert 0 < diff.max() <= max_tol and diff.mean() <= mean_tol, (diff.max(), diff.mean())


@pytest.mark.parametrize(
    "arch,quant,block_size",
    [
        ("llama", "int8", 32),
        ("llama", "int4", 32),
        ("gpt2", "int4", 32),
        ("llama", "int4", 128),
        ("granite", "int4", 32),  # granite, gemma2: an LM head with a logit tail (scaling, soft-capping)
        ("gemma2", "int8", 32),
    ],
)
def test_qlora_training_matches_peft_on_the_dequantized_model(
    arch, quant, block_size, method_bundle, tiny_model_dir, tmp_path
):
    """The graph computes exactly the dequantized weights: PEFT on them gives the same steps.

    Block 128 pads the last block of every 64-input layer of the tiny models (training slices it off).
    """
    bundle = method_bundle(arch, "qlora", quant=quant, **({"block_size": block_size} if block_size != 32 else {}))
    cfg = read_manifest(bundle)["adapter_config"]
    adapter = perturbed_adapter(bundle, seed=3, scale=0.05)
    x = ids(seed=6)
    peft = peft_reference(_dequantized_model_dir(bundle, tiny_model_dir(arch), tmp_path / "ref"), cfg, adapter)
    with torch.no_grad():
        np.testing.assert_allclose(
            inference_logits(bundle, x, adapter, config_scaling(cfg)),
            peft(torch.from_numpy(x)).logits.numpy(),
            atol=1e-4,
            rtol=0,
        )
    batches = [batch(seed) for seed in range(3)]
    ours, our_grads = ort_losses(bundle, adapter, batches, lr=1e-3)
    ref, ref_grads = peft_losses(peft, batches, lr=1e-3)
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
    for key, grad in ref_grads.items():
        assert np.abs(our_grads[key] - grad).max() <= 1e-4 * np.abs(grad).max(), key


def test_qlora_quantizes_the_whole_frozen_base_once_for_every_graph(method_bundle, tiny_model_dir):
    """Every Linear, the LM head and the embedding, whatever the LoRA targets; stored once."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    modules = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    fp32 = sum(m.weight.numel() * 4 for n, m in model.named_modules() if n in modules)
    lora = (method_bundle("llama", "lora", targets="q_proj,v_proj") / names.BASE_WEIGHTS).stat().st_size
    int8 = method_bundle("llama", "qlora", targets="q_proj,v_proj", quant="int8")
    int4 = method_bundle("llama", "qlora", targets="q_proj,v_proj", quant="int4", block_size=32)
    assert lora - (int8 / names.BASE_WEIGHTS).stat().st_size >= 0.68 * fp32  # 1 byte + scales vs 4 bytes
    assert lora - (int4 / names.BASE_WEIGHTS).stat().st_size >= 0.72 * fp32  # ½ byte + scales, offsets
    for bundle in (int8, int4):
        stored = {}  # graph file -> (offset, length) of every external tensor
        for graph_file in (names.TRAINING_MODEL, names.EVAL_MODEL, names.INFERENCE_MODEL):
            graph = onnx.load(bundle / graph_file, load_external_data=False).graph
            floats = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2]
            assert all(name.startswith((PEFT_PREFIX, "/quant/")) for name in floats), floats
            external = [
                {e.key: e.value for e in t.external_data}
                for t in graph.initializer
                if t.external_data and not t.name.startswith("/quant/block_sums/")
            ]  # inference's 0/1 matrices
            assert all(e["location"] == names.BASE_WEIGHTS for e in external)
            stored[graph_file] = {(e["offset"], e["length"]) for e in external}
            if graph_file == names.TRAINING_MODEL:
                quantized = {
                    t.name[len("/quant/") : -len("/q")].split("/vocab")[0]
                    for t in graph.initializer
                    if t.name.startswith("/quant/") and t.name.endswith("/q")
                }  # the head in vocab chunks
                assert quantized == modules
        assert stored[names.TRAINING_MODEL] == stored[names.EVAL_MODEL]
        assert stored[names.INFERENCE_MODEL] <= stored[names.TRAINING_MODEL]  # the same bytes, read as they fit


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_qlora_gradients_know_the_dequantized_weights_shapes(arch, quant, method_bundle):
    """ORT cannot infer through the contrib DequantizeLinear; without the declared shapes its gradient
    graph reduces every broadcast at run time (SmolLM2: 2,400 more nodes, 13 MB more peak RSS)."""

    def dynamic_broadcasts(bundle):
        graph = onnx.load(bundle / names.TRAINING_MODEL, load_external_data=False).graph
        return sum(n.op_type == "BroadcastGradientArgs" for n in graph.node)

    assert dynamic_broadcasts(method_bundle(arch, "qlora", quant=quant)) == dynamic_broadcasts(method_bundle(arch)) == 0


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_qlora_lm_head_and_loss_run_one_vocabulary_chunk_at_a_time(quant, method_bundle):
    """Gemm(x, DequantizeLinear(int8 rows (R, H)), transB=1) per chunk, and the loss over the chunks' logits:
    no (N, V) logits are ever concatenated."""
    bundle = method_bundle("llama", "qlora", quant=quant)
    graph = onnx.load(bundle / names.TRAINING_MODEL, load_external_data=False).graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, set] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    gemms = [n for n in graph.node if n.op_type == "Gemm" and n.output[0].startswith("/quant/lm_head/")]
    assert len(gemms) == HEAD_CHUNKS and "logits" not in producers
    rows = 0
    for gemm in gemms:
        dequantize_node = producers[gemm.input[1]]
        q = inits[dequantize_node.input[0]]
        assert dequantize_node.op_type == "DequantizeLinear"
        assert q.data_type == onnx.TensorProto.INT8 and q.dims[1] == 64
        read_by = readers[gemm.output[0]]  # the loss, and its gradient
        assert {"ReduceLogSumExp", "GatherElements"} <= read_by and not read_by & {"Concat", "ConcatTraining"}
        rows += q.dims[0]
    assert rows == 320  # the tiny vocabulary
    served = onnx.load(bundle / names.INFERENCE_MODEL, load_external_data=False).graph
    assert {n for n in inits if n.startswith("/quant/lm_head/")} <= {t.name for t in served.initializer}


@pytest.mark.parametrize("arch,tied", [("llama", True), ("qwen2", False)])
def test_a_tied_lm_head_reads_the_embedding_tables_bytes(arch, tied, method_bundle):
    bundle = method_bundle(arch, "qlora", quant="int4")
    for graph_file in (names.TRAINING_MODEL, names.EVAL_MODEL, names.INFERENCE_MODEL):
        graph = onnx.load(bundle / graph_file, load_external_data=False).graph
        regions = {t.name: external_region(t)[1:] for t in graph.initializer if t.external_data}
        start, length = regions["/quant/model.embed_tokens/q"]
        chunks = [regions[f"/quant/lm_head/vocab{k}/q"] for k in range(HEAD_CHUNKS)]  # (R, H) int8 each
        inside = [start <= offset and offset + size <= start + length for offset, size in chunks]
        assert all(inside) == tied and any(inside) == tied, (chunks, start, length)


def test_lm_head_quantization_refuses_graphs_it_cannot_rewrite(method_bundle, tmp_path):
    lora = onnx.load(method_bundle("llama", "lora") / names.INFERENCE_MODEL, load_external_data=False)
    files = WeightFiles(method_bundle("llama", "lora"), WeightStore(tmp_path / "store.bin"))
    with pytest.raises(EdgetuneError, match="quantized after its loss is added"):
        quantize_lm_head(lora, training=True, files=files)
    qlora = onnx.load(method_bundle("llama", "qlora", quant="int8") / names.INFERENCE_MODEL, load_external_data=False)
    with pytest.raises(EdgetuneError, match="do not come from an LM head MatMul over a float weight"):
        quantize_lm_head(qlora, training=False, files=files)  # already quantized


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(method="lora", quant="int8"), "quant: int8 needs method qlora (method is lora)"),
        (dict(method="qlora"), "quant: method qlora needs a quant type"),
        (dict(method="qlora", quant="int3"), "quant: must be one of int8, int4, got 'int3'"),
        (dict(method="qlora", quant="int4", block_size=48), "block_size: must be one of 32, 64, 128, got 48"),
        (dict(method="lorax"), "method: must be one of lora, dora, qlora, got 'lorax'"),
    ],
)
def test_bad_quantization_settings_are_one_line_errors(kwargs, message, tiny_model_dir, tmp_path):
    with pytest.raises(EdgetuneError) as err:
        build_bundle(BuildConfig(str(tiny_model_dir("llama")), tmp_path / "b", targets="all-linear", **kwargs))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))


@pytest.mark.parametrize("arch,linears", [("llama", 14), ("gpt2", 8)])
def test_int4_serving_runs_every_linear_on_matmul_nbits(arch, linears, method_bundle):
    """No weight is dequantized per run when serving: GPT-2's Gemm layers (x·W + bias) neither."""
    graph = onnx.load(
        method_bundle(arch, "qlora", quant="int4") / names.INFERENCE_MODEL, load_external_data=False
    ).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulNBits") == linears and "DequantizeLinear" not in ops


@pytest.mark.parametrize("arch,block_size", [("llama", 32), ("gpt2", 32), ("llama", 128)])
def test_qlora_merge_dequantizes_and_folds(arch, block_size, method_bundle, tmp_path):
    from edgetune.common.peft import save_adapter
    from edgetune.runtime.merge import MERGED_MODEL, merge
    from tests.parity import prefill_logits

    bundle = method_bundle(arch, "qlora", quant="int4", **({"block_size": block_size} if block_size != 32 else {}))
    manifest = read_manifest(bundle)
    adapter = perturbed_adapter(bundle, seed=7)
    save_adapter(tmp_path / "adapter", adapter, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    merge(bundle, tmp_path / "adapter", tmp_path / "merged")
    x = ids(seed=8)
    unmerged = inference_logits(bundle, x, adapter, config_scaling(manifest["adapter_config"]))
    np.testing.assert_allclose(prefill_logits(tmp_path / "merged", x), unmerged, atol=1e-4, rtol=0)
    graph = onnx.load(tmp_path / "merged" / MERGED_MODEL, load_external_data=False).graph
    assert not any(n.name.startswith("/lora/") for n in graph.node)
    nbits = {module_path(n.name) for n in graph.node if n.op_type == "MatMulNBits"}
    assert not nbits & set(manifest["adapted_modules"])  # adapted layers now float
    assert any(n.op_type == "Gather" and n.input[0].startswith("/quant/") for n in graph.node)  # the embedding int8
    merge(bundle, tmp_path / "adapter", tmp_path / "int4", quant="int4")  # adapted layers back to 4 bits
    assert np.abs(prefill_logits(tmp_path / "int4", x) - unmerged).max() < 0.1  # test_merge.py's int4 bound


def test_int4_reproduces_gguf_q4_1_weights_exactly():
    """Q4_1 stores w = d·q + m per block of 32 inputs: the same grid as our int4, so nothing is lost."""
    rng = np.random.default_rng(1)
    d = rng.uniform(1e-3, 1e-2, (4, 1, 24)).astype(np.float32)  # (in/32, 1, out)
    m = rng.uniform(-0.1, 0.0, (4, 1, 24)).astype(np.float32)
    q = rng.integers(0, 16, (4, 32, 24))
    q[:, 0], q[:, 1] = 0, 15  # each block spans its grid
    w = (q * d + m).astype(np.float32).reshape(128, 24)  # (in, out)
    np.testing.assert_allclose(dequantize(quantize_int4(w, 32), w.shape), w, rtol=0, atol=1e-7)
