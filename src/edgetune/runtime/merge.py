"""`edgetune merge`: fold an adapter (LoRA, DoRA, over a QLoRA base too) into the base weights.

The result is the bundle's inference graph without its LoRA branches: Optimum's input
and output names (input_ids, attention_mask, position_ids, past_key_values.N.key/value
-> logits, present.N.key/value), weights in `model.onnx_data`, plus the tokenizer files,
config.json and a manifest. It runs on the plain `onnxruntime` package. With `quant`
("int8", "int4") its Linears run on quantized weights (`merge_quant`).
"""

import shutil
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
from edgetune.runtime.fold import folded_weight
from edgetune.runtime.merge_quant import INT4_BLOCK, QUANTS, quantize_merged

MERGED_MODEL = names.MERGED_MODEL
MERGED_DATA = "model.onnx_data"
LOW_RANK_PREFIX = "/merge/low_rank/"
COPIED = (names.HF_CONFIG, names.GENERATION_CONFIG, *names.TOKENIZER_FILES)


def merge(bundle: Path, adapter: Path, out: Path, *, trust=None, sign: Path | None = None, quant=None) -> dict:
    """Write a standalone merged model folder to `out`; return its manifest.

    trust: a trusted public keys file (else $EDGETUNE_TRUSTED_KEYS) the bundle and the
    adapter must be signed by; sign: a private key file to sign the merged folder with;
    quant: None (float weights), "int8" or "int4". Only files the bundle's manifest lists are read or copied.
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
    fold_adapter(model, weights | deltas, config, manifest["adapted_modules"], low_rank=quant is not None)
    onnx.checker.check_model(model)

    with atomic_folder(out, "merging") as tmp:
        if quant is not None:
            block = (manifest.get("quantization") or {}).get("block_size", INT4_BLOCK)
            quantize_merged(model, quant, keep_float=LOW_RANK_PREFIX, block=block)
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


def fold_adapter(model: onnx.ModelProto, weights: dict, config: dict, modules: list[str], low_rank=False) -> None:
    """Replace each adapter branch of the inference graph by updated base weights, in place.

    LoRA: W' = W + s·Aᵀ·Bᵀ, plus Δᵀ where `weights` has a base delta (FedEx-LoRA).
    DoRA (PEFT's merge): W' = m/‖W + s·Aᵀ·Bᵀ‖ · (W + s·Aᵀ·Bᵀ), the
    norm per output feature. QLoRA: W is dequantized first, so merged layers are float32;
    the layers without an adapter stay quantized.

    low_rank: keep the adapter's product apart, y = x·W'' + (x·s·Aᵀ)·Bᵀ'' (DoRA's column
    factor folded into W'' and Bᵀ''), as constants named under LOW_RANK_PREFIX, so W'' can
    be quantized without rounding the adapter's delta away (`merge_quant`).
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
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id(the branch's join) -> the nodes written in its place
    for path in modules:
        prefix = branch_prefix(path) + "/"
        base = producers[base_output(path)]
        trans_b = any(attr.name == "transB" and attr.i for attr in base.attribute)
        w = _float_weight(model, base, inits, producers)  # (in, out); a MatMulNBits base becomes a float MatMul
        w, down, up = _folded_parts(path, w, weights, scale, dora)  # (in, out), (in, r), (r, out)
        name = f"{base.input[1]}/merged"
        merged = w if low_rank else folded_weight(w, down, up)  # (in, out)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(merged.T if trans_b else merged), name))
        base.input[1] = name
        final = next(n for n in consumers[base.output[0]] if not n.output[0].startswith(prefix))  # y = base + ...
        drop |= {id(n) for n in graph.node if n.name.startswith(prefix)} | {id(final)}
        if low_rank:
            replaced[id(final)] = _low_rank_branch(graph, base, final.output[0], path, down, up)
        else:
            base.output[0] = final.output[0]
    kept = [m for n in graph.node for m in replaced.get(id(n), [] if id(n) in drop else [n])]
    del graph.node[:]
    graph.node.extend(kept)
    inputs = [i for i in graph.input if i.name != names.LORA_SCALING and not i.name.startswith(PEFT_PREFIX)]
    del graph.input[:]
    graph.input.extend(inputs)
    _prune(graph)


def _float_weight(model: onnx.ModelProto, base: onnx.NodeProto, inits: dict, producers: dict) -> np.ndarray:
    """The (in, out) float weight `base` multiplies by; a MatMulNBits (QLoRA int4) `base` becomes a float MatMul."""
    if base.op_type == "MatMulNBits":
        w = _nbits_weight(model, base, inits, producers)  # (in, out)
        base.op_type, base.domain = "MatMul", ""
        del base.input[2:]
        del base.attribute[:]
        return w
    w = _constant(model, base.input[1], inits, producers)
    return w.T if any(attr.name == "transB" and attr.i for attr in base.attribute) else w


def _folded_parts(path: str, w: np.ndarray, weights: dict, scale: float, dora: bool) -> tuple:
    """(W'', s·Aᵀ, Bᵀ'') with W' = W'' + s·Aᵀ·Bᵀ'': W (in, out) -> (in, out), (in, r), (r, out)."""
    key_a, key_b = lora_keys(path)
    a, b = weights[key_a], weights[key_b]  # (r, in), (out, r)
    for key, got, needed in ((key_a, a.shape[1], w.shape[0]), (key_b, b.shape[0], w.shape[1])):
        if got != needed:
            raise AdapterError(
                f"{key} has shape {tuple(weights[key].shape)}, which does not fit the layer's "
                f"{needed} {'inputs' if key == key_a else 'outputs'} (adapter for another base model?)"
            )
    if dora and weights[magnitude_key(path)].shape != (w.shape[1],):
        raise AdapterError(f"{magnitude_key(path)} has shape {weights[magnitude_key(path)].shape}, not ({w.shape[1]},)")
    down, up = (scale * a.T).astype(np.float32), np.ascontiguousarray(b.T, dtype=np.float32)  # (in, r), (r, out)
    if delta_key(path) in weights:
        w = w + weights[delta_key(path)].T  # (out, in) -> (in, out)
    if dora:
        column = weights[magnitude_key(path)] / np.linalg.norm(folded_weight(w, down, up), axis=0)  # (out,)
        w, up = w * column, up * column
    return w.astype(np.float32), down, up.astype(np.float32)


def _low_rank_branch(graph, base: onnx.NodeProto, y: str, path: str, down: np.ndarray, up: np.ndarray) -> list:
    """Nodes computing y = base(x) + (x·down)·up, with down and up as constants."""
    p = f"{LOW_RANK_PREFIX}{path}"
    graph.initializer.extend([numpy_helper.from_array(down, f"{p}/down"), numpy_helper.from_array(up, f"{p}/up")])
    base_y = base.output[0]
    make = onnx.helper.make_node
    return [
        make("MatMul", [base.input[0], f"{p}/down"], [f"{p}/x_down"], name=f"{p}/down/MatMul"),  # (..., r)
        make("MatMul", [f"{p}/x_down", f"{p}/up"], [f"{p}/delta"], name=f"{p}/up/MatMul"),  # (..., out)
        make("Add", [base_y, f"{p}/delta"], [y], name=f"{p}/Add"),
    ]


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
