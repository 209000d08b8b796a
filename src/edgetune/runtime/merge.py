"""`edgetune merge`: fold an adapter (LoRA, DoRA, over a QLoRA base too) into the base weights.

The result is the bundle's inference graph without its LoRA branches: Optimum's input
and output names (input_ids, attention_mask, position_ids, past_key_values.N.key/value
-> logits, present.N.key/value), weights in `model.onnx_data`, plus the tokenizer files,
config.json and a manifest. It runs on the plain `onnxruntime` package. With
`quant="int8"` its MatMul and Gemm weights are int8 per output channel (`int8_weights`:
ONNX Runtime's `quantize_dynamic`, activations quantized as each product runs), a quarter
of the float bytes.
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

import edgetune
from edgetune.common import names
from edgetune.common.atomic import atomic_folder
from edgetune.common.bundle import open_bundle, sign_manifest
from edgetune.common.errors import AdapterError, BundleError, EdgetuneError
from edgetune.common.hashing import sha256_file
from edgetune.common.manifest import write_manifest
from edgetune.common.peft import (
    PEFT_PREFIX,
    base_output,
    branch_prefix,
    config_scaling,
    delta_key,
    load_adapter,
    load_base_delta,
    lora_keys,
    magnitude_key,
)
from edgetune.common.trust import resolve_trust
from edgetune.runtime.int8_weights import quantize_weights_int8

MERGED_MODEL = names.MERGED_MODEL
MERGED_DATA = "model.onnx_data"
COPIED = (names.HF_CONFIG, names.GENERATION_CONFIG, *names.TOKENIZER_FILES)


QUANTS = ("int8",)


def merge(bundle: Path, adapter: Path, out: Path, *, trust=None, sign: Path | None = None, quant=None) -> dict:
    """Write a standalone merged model folder to `out`; return its manifest.

    trust: a trusted public keys file (else $EDGETUNE_TRUSTED_KEYS) the bundle and the
    adapter must be signed by; sign: a private key file to sign the merged folder with;
    quant: None (float weights) or "int8". Only files the bundle's manifest lists are read or copied.
    """
    if quant not in (None, *QUANTS):
        raise EdgetuneError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    out = Path(out)
    trusted = resolve_trust(trust)
    opened = open_bundle(bundle, trust=trusted)
    manifest = opened.manifest
    if manifest["task"] != "causal-lm":  # an encoder's head lives in the adapter: serve it with `predict`
        raise BundleError(f"{opened.folder}: merge supports causal-lm bundles, not {manifest['task']}")
    weights, config = load_adapter(adapter, manifest, trust=trusted)
    deltas = load_base_delta(adapter, manifest, weights)
    model = onnx.load(opened.path(names.INFERENCE_MODEL))  # base weights come in from base_weights.bin
    fold_adapter(model, weights | deltas, config, manifest["adapted_modules"])
    onnx.checker.check_model(model)

    with atomic_folder(out, "merging") as tmp:
        if quant == "int8":
            model = _int8_model(model)
        onnx.save(
            model,
            tmp / MERGED_MODEL,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=MERGED_DATA,
            size_threshold=1024,
        )
        del model
        for name in COPIED:
            if opened.optional(name) is not None:
                shutil.copyfile(opened.path(name), tmp / name)
        result = write_manifest(
            tmp,
            {
                "kind": "merged",
                "edgetune_version": edgetune.__version__,
                "source": manifest["source"],
                "architecture": manifest["architecture"],
                **({"quant": quant} if quant else {}),
                "adapter": {
                    "path": str(adapter),
                    "config": config,
                    "sha256": sha256_file(Path(adapter) / names.ADAPTER_WEIGHTS),
                },
            },
        )
        if sign is not None:
            sign_manifest(tmp, sign)
    return result


def _int8_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with int8 weights per output channel (`int8_weights`), through a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="edgetune-merge-", ignore_cleanup_errors=True) as tmp:
        path = Path(tmp) / "float.onnx"
        onnx.save(model, path, save_as_external_data=True, location="float.onnx_data", size_threshold=1024)
        del model
        return onnx.load(quantize_weights_int8(path, Path(tmp) / "int8.onnx"))


def fold_adapter(model: onnx.ModelProto, weights: dict, config: dict, modules: list[str]) -> None:
    """Replace each adapter branch of the inference graph by updated base weights, in place.

    LoRA: W' = W + s·Aᵀ·Bᵀ, plus Δᵀ where `weights` has a base delta (FedEx-LoRA).
    DoRA (PEFT's merge): W' = m/‖W + s·Aᵀ·Bᵀ‖ · (W + s·Aᵀ·Bᵀ), the
    norm per output feature. QLoRA: W is dequantized first, so merged layers are float32;
    the layers without an adapter stay quantized.
    """
    graph = model.graph
    scale, dora = config_scaling(config), bool(config.get("use_dora"))
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    drop: set[int] = set()
    for path in modules:
        prefix = branch_prefix(path) + "/"
        base = producers[base_output(path)]
        trans_b = any(attr.name == "transB" and attr.i for attr in base.attribute)
        if base.op_type == "MatMulNBits":  # QLoRA int4: becomes a float MatMul
            w = _nbits_weight(model, base, inits, producers)  # (in, out)
            base.op_type, base.domain = "MatMul", ""
            del base.input[2:]
            del base.attribute[:]
        else:
            w = _constant(model, base.input[1], inits, producers)
            w = w.T if trans_b else w  # (in, out)
        key_a, key_b = lora_keys(path)
        a, b = weights[key_a], weights[key_b]  # (r, in), (out, r)
        for key, got, needed in ((key_a, a.shape[1], w.shape[0]), (key_b, b.shape[0], w.shape[1])):
            if got != needed:
                raise AdapterError(
                    f"{key} has shape {tuple(weights[key].shape)}, which does not fit the layer's "
                    f"{needed} {'inputs' if key == key_a else 'outputs'} (adapter for another base model?)"
                )
        if dora and weights[magnitude_key(path)].shape != (w.shape[1],):
            raise AdapterError(
                f"{magnitude_key(path)} has shape {weights[magnitude_key(path)].shape}, not ({w.shape[1]},)"
            )
        merged = w + (scale * (a.T @ b.T)).astype(np.float32)  # (in, out)
        if delta_key(path) in weights:
            merged += weights[delta_key(path)].T  # (out, in) -> (in, out)
        if dora:
            merged = merged * (weights[magnitude_key(path)] / np.linalg.norm(merged, axis=0))  # (out,) per column
        name = f"{base.input[1]}/merged"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(merged.T if trans_b else merged), name))
        base.input[1] = name
        final = next(n for n in consumers[base.output[0]] if not n.output[0].startswith(prefix))  # y = base + ...
        base.output[0] = final.output[0]
        drop |= {id(n) for n in graph.node if n.name.startswith(prefix)} | {id(final)}
    kept = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(kept)
    inputs = [i for i in graph.input if i.name != names.LORA_SCALING and not i.name.startswith(PEFT_PREFIX)]
    del graph.input[:]
    graph.input.extend(inputs)
    _prune(graph)


def _constant(model: onnx.ModelProto, name: str, inits: dict, producers: dict) -> np.ndarray:
    """A tensor's value: an initializer, or computed from initializers only (QLoRA's dequantized weight)."""
    if name in inits:
        return numpy_helper.to_array(inits[name])
    needed, stack = set(), [name]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(node.input)
    nodes = [n for n in model.graph.node if id(n) in needed]
    used = [inits[i] for i in dict.fromkeys(i for n in nodes for i in n.input) if i in inits]
    output = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["in", "out"])
    graph = onnx.helper.make_graph(nodes, "constant", [], [output], used)
    sub = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    onnx.checker.check_model(sub)
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([name], {})[0]


def _nbits_weight(model: onnx.ModelProto, node: onnx.NodeProto, inits: dict, producers: dict) -> np.ndarray:
    """The float (in, out) weight a MatMulNBits node multiplies by: W = (q - z)·s, z = 8 if it has none.

    (A QLoRA int4 layer adds its offsets' share after the node; that stays as it is.)
    """
    attrs = {a.name: a.i for a in node.attribute}
    n_out, block = attrs["N"], attrs["block_size"]
    blob = numpy_helper.to_array(inits[node.input[1]])  # (out, in/bs, bs/2) uint8
    q = np.stack([blob & 0x0F, blob >> 4], axis=-1).reshape(n_out, -1, block).astype(np.float32)  # low nibble first
    scale = _constant(model, node.input[2], inits, producers).reshape(n_out, -1, 1)  # (out, in/bs, 1)
    has_zero = len(node.input) > 3 and node.input[3]
    zero = _constant(model, node.input[3], inits, producers).reshape(n_out, -1, 1) if has_zero else 8.0
    return ((q - zero) * scale).reshape(n_out, -1)[:, : attrs["K"]].T  # a padded last block's tail dropped


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nothing reads, then initializers nothing reads."""
    outputs = {o.name for o in graph.output}
    while True:
        used = outputs | {name for n in graph.node for name in n.input}
        kept = [n for n in graph.node if any(o in used for o in n.output)]
        if len(kept) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(kept)
    initializers = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
