"""`--serve-quant int4` serves Q4_1 blocks exactly, in QLoRA-int4's inference form (one implementation).

A float base whose Linear weights are Q4_1 values (as SmolLM2's, loaded from its GGUF) comes back
exactly: with float activations in the kernels, int4 serving equals fp32 to float rounding.
"""

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from transformers import AutoModelForCausalLM

from edgetune.builder.pipeline import build_bundle
from edgetune.builder.rewrites.quant.formats import dequantize, quantize_int4, quantize_int8
from edgetune.common import names
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import config_scaling, save_adapter
from edgetune.options import BuildConfig
from edgetune.runtime.engine import Engine
from tests.parity import inference_logits, random_adapter
from tests.tamper import copy_bundle, reseal
from tests.tiny_models import make_model_dir

PROMPTS = [[5, 17, 42, 8, 99, 23], [60, 12, 250, 3, 44, 90, 101, 5, 6, 7, 7, 31]]


def _q4_1_model(folder):
    """A tiny llama whose Linear weights are Q4_1 values (blocks of 32 inputs) and whose tied table is int8 rows."""
    make_model_dir("llama", folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                w = module.weight.numpy().T  # (in, out)
                module.weight.copy_(torch.from_numpy(np.ascontiguousarray(dequantize(quantize_int4(w, 32), w.shape).T)))
        table = model.model.embed_tokens.weight  # (V, H), the head's too
        t = quantize_int8(table.numpy().T)  # per row of the table
        table.copy_(torch.from_numpy(np.ascontiguousarray((t["q"].astype(np.float32) * t["scale"]).T)))
    model.save_pretrained(folder)
    return folder


def _with_float_activations(bundle, folder):
    """A copy of `bundle` whose kernels take float activations, re-listed: MatMulNBits at accuracy_level 0, and
    the int8 head's product reads x/a (before QuantizeLinear rounds it) times its dequantized weight."""
    copy_bundle(bundle, folder)
    model = onnx.load(folder / names.SERVE_MODEL, load_external_data=False)
    producers = {o: n for n in model.graph.node for o in n.output}
    nodes = []
    for node in model.graph.node:
        for a in node.attribute:
            if node.op_type == "MatMulNBits" and a.name == "accuracy_level":
                a.i = 0
        if node.op_type == "MatMulIntegerToFloat":  # (x_q, q, 1, s, 128) -> (x/a)·(q·s)
            x_q, q, _, s, _ = node.input
            w = f"{node.name}/float_weight"
            nodes.append(helper.make_node("Cast", [q], [f"{w}/q"], to=onnx.TensorProto.FLOAT))
            nodes.append(helper.make_node("Mul", [f"{w}/q", s], [w]))
            node = helper.make_node("MatMul", [producers[x_q].input[0], w], list(node.output), name=node.name)
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, folder / names.SERVE_MODEL)
    reseal(folder)
    return folder


def _adapter(bundle, folder, seed=5):
    manifest = read_manifest(bundle)
    weights = random_adapter(bundle, seed=seed, scale=0.3)
    save_adapter(folder, weights, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    return weights, config_scaling(manifest["adapter_config"])


@pytest.fixture(scope="module")
def q4_1_bundles(tmp_path_factory):
    """{"lora": int4-serving LoRA bundle, "qlora": QLoRA-int4 bundle} of one Q4_1-valued tiny llama."""
    root = tmp_path_factory.mktemp("q4_1")
    model = _q4_1_model(root / "hf")
    out = {"lora": root / "lora", "qlora": root / "qlora"}
    build_bundle(BuildConfig(str(model), out["lora"], targets="all-linear", serve_quant="int4"))
    build_bundle(BuildConfig(str(model), out["qlora"], targets="all-linear", method="qlora", quant="int4"))
    return out


def test_int4_serving_of_q4_1_weights_equals_fp32(q4_1_bundles, tmp_path):
    """Logits of the int4 serving graph against the fp32 inference graph of the same bundle.

    With float activations the weights are exact (float rounding only); as built, the kernels'
    int8 activations add their rounding, which stays far below re-rounded weights' error.
    """
    bundle = q4_1_bundles["lora"]
    weights, scaling = _adapter(bundle, tmp_path / "a")
    exact = Engine(_with_float_activations(bundle, tmp_path / "float_activations"))
    built = Engine(bundle)
    for engine in (exact, built):
        engine.load_adapter("a", tmp_path / "a")
    for prompt in PROMPTS:
        for adapter, scale in (("a", scaling), (None, 0.0)):
            reference = inference_logits(bundle, np.array([prompt]), weights, scale)[0, -1]
            np.testing.assert_allclose(exact.next_token_logits(prompt, adapter), reference, atol=2e-5)
            np.testing.assert_allclose(
                built.next_token_logits(prompt, adapter), reference, atol=0.006
            )  # measured 0.003; integer zero points 0.010


def test_int4_serving_equals_the_qlora_int4_inference_graph(q4_1_bundles, tmp_path):
    """The same base through `--serve-quant int4` and through QLoRA-int4's inference graph: one form."""
    lora, qlora = q4_1_bundles["lora"], q4_1_bundles["qlora"]
    weights, scaling = _adapter(lora, tmp_path / "a")
    engine = Engine(_with_float_activations(lora, tmp_path / "float_activations"))
    engine.load_adapter("a", tmp_path / "a")
    for prompt in PROMPTS:
        reference = inference_logits(qlora, np.array([prompt]), weights, scaling)[0, -1]
        np.testing.assert_allclose(engine.next_token_logits(prompt, "a"), reference, atol=2e-5)


def test_the_linears_reading_one_input_share_one_matmul_nbits_and_block_sums(q4_1_bundles):
    """q/k/v read one input and gate/up another: one MatMulNBits and one block sum per input tensor."""
    model = onnx.load(q4_1_bundles["lora"] / names.SERVE_MODEL, load_external_data=False)
    producers = {o: n for n in model.graph.node for o in n.output}
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits" and "lm_head" not in n.name]
    sums = [n for n in model.graph.node if n.op_type == "ReduceSum" and n.output[0].endswith("/block_sums")]
    assert len(nbits) == 2 * 4  # two layers of q/k/v, o, gate/up, down
    splits = [n for n in model.graph.node if n.op_type == "Split" and n.name.startswith("/serve/fused/")]
    assert sorted(len(n.output) for n in splits) == [2, 2, 3, 3]
    shares = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[0] in {m.output[0] for m in sums}]
    assert len(shares) == len(nbits)  # the minimums' share: one per MatMulNBits, stacked like it
    assert len(sums) == 2 * 4  # per layer: the norm's output (q/k/v), o's input, the norm's (gate/up), down's
    assert {producers[n.input[0]].input[0] for n in sums} == {n.input[0] for n in nbits}  # ReduceSum(Reshape(x))
