"""`edgetune merge`: fold an adapter into the base weights, W' = W + s·Aᵀ·Bᵀ, as a plain model.

The result is the bundle's inference graph without its LoRA branches: Optimum's input
and output names (input_ids, attention_mask, position_ids, past_key_values.N.key/value
-> logits, present.N.key/value), weights in `model.onnx_data`, plus the tokenizer files,
config.json and a manifest. It runs on the plain `onnxruntime` package.
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

import edgetune
from edgetune.common import names
from edgetune.common.adapter_config import scaling
from edgetune.common.hashing import sha256_file
from edgetune.common.manifest import verify, write_manifest
from edgetune.runtime.adapters import load_adapter

MERGED_MODEL = "model.onnx"
MERGED_DATA = "model.onnx_data"
COPIED = (names.HF_CONFIG, names.GENERATION_CONFIG, *names.TOKENIZER_FILES)


def merge(bundle: Path, adapter: Path, out: Path) -> dict:
    """Write a standalone merged model folder to `out`; return its manifest."""
    bundle, out = Path(bundle), Path(out)
    manifest = verify(bundle)
    weights, config = load_adapter(adapter, manifest)
    model = onnx.load(bundle / names.INFERENCE_MODEL)  # base weights come in from base_weights.bin
    fold_adapter(model, weights, scaling(config), manifest["adapted_modules"])
    onnx.checker.check_model(model)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.merging-"))
    try:
        onnx.save(model, tmp / MERGED_MODEL, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=MERGED_DATA, size_threshold=1024)
        for name in COPIED:
            if (bundle / name).exists():
                shutil.copy2(bundle / name, tmp / name)
        result = write_manifest(tmp, {
            "kind": "merged",
            "edgetune_version": edgetune.__version__,
            "source": manifest["source"],
            "architecture": manifest["architecture"],
            "adapter": {"path": str(adapter), "config": config,
                        "sha256": sha256_file(Path(adapter) / names.ADAPTER_WEIGHTS)},
        })
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return result
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fold_adapter(model: onnx.ModelProto, weights: dict, scale: float, modules: list[str]) -> None:
    """Replace each LoRA branch of the inference graph by updated base weights, in place."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    drop: set[int] = set()
    for path in modules:
        prefix = f"/lora/{path}/"
        base = producers[f"{prefix}base_output"]
        a = weights[f"{names.PEFT_PREFIX}{path}.lora_A.weight"]   # (r, in)
        b = weights[f"{names.PEFT_PREFIX}{path}.lora_B.weight"]   # (out, r)
        delta = scale * (a.T @ b.T)                               # (in, out), the graph's MatMul layout
        if any(attr.name == "transB" and attr.i for attr in base.attribute):
            delta = delta.T
        w_name = base.input[1]
        merged = numpy_helper.to_array(inits[w_name]) + delta.astype(np.float32)
        base.input[1] = f"{w_name}/merged"
        graph.initializer.append(numpy_helper.from_array(merged, base.input[1]))
        add = next(n for n in consumers[base.output[0]] if f"{prefix}xAB" in n.input)  # y = base + xAB
        base.output[0] = add.output[0]
        drop |= {id(n) for n in graph.node if n.name.startswith(prefix)} | {id(add)}
    kept = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(kept)
    adapter_inputs = {names.LORA_SCALING, *(k for m in modules for k in (
        f"{names.PEFT_PREFIX}{m}.lora_A.weight", f"{names.PEFT_PREFIX}{m}.lora_B.weight"))}
    inputs = [i for i in graph.input if i.name not in adapter_inputs]
    del graph.input[:]
    graph.input.extend(inputs)
    used = {name for n in graph.node for name in n.input}
    initializers = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
