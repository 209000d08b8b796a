"""`edgetune build`: HF model -> bundle folder a device can train and serve from.

    load -> export (no-past, with-past) -> [quantize] -> LoRA/DoRA rewrite + loss
         -> training artifacts -> inference graph -> base weights shared once
         -> tokenizer, config -> manifest

The base weights stay on disk from the export on (see `edgetune.build.weights`): the
graphs are handled as structure only, so models over protobuf's 2 GB limit build too,
and the build's memory is the torch model plus one export's constant-folded weights.

method: "lora", "dora" (PEFT's use_dora), or "qlora" (LoRA over an int8/int4 frozen base:
every Linear and the embeddings, and the LM head in int8, see `edgetune.build.quantize`).
`init_adapter` starts from a PEFT adapter folder, whose config then sets r, alpha,
dropout, rsLoRA, DoRA and targets. `gradient_checkpointing` recomputes each decoder layer
in the backward pass (`edgetune.build.recompute_layers`); by default only for qlora, as in
PEFT's QLoRA recipe (`prepare_model_for_kbit_training`), whose point is memory.

Everything is written into a temporary sibling folder that is renamed into place at the
end, so an interrupted build never leaves a half bundle.
"""

import gc
from pathlib import Path

import onnx
import onnxruntime

import edgetune
from edgetune.build import lora
from edgetune.build.artifacts import generate_training_artifacts
from edgetune.build.dora import add_dora, weight_norms
from edgetune.build.export import export_graphs, load_exported
from edgetune.build.graph import drop_nan_guards, find_linears
from edgetune.build.lora import LoraSpec, add_lora
from edgetune.build.loss import add_causal_lm_loss
from edgetune.build.peft_import import import_weights, read_init_adapter, target_matcher
from edgetune.build.quantize import check_quant_args, quantize_frozen_base, quantize_lm_head
from edgetune.build.recompute_attention import recompute_attention_probs
from edgetune.build.recompute_layers import recompute_layers
from edgetune.build.recompute_weights import recompute_dequantized_weights
from edgetune.build.registry import get_architecture, resolve_targets
from edgetune.build.source import load_source
from edgetune.build.weights import STAGING_WEIGHTS, WeightStore, load_weights, share_base_weights
from edgetune.common.atomic import atomic_folder
from edgetune.common import names
from edgetune.common.adapter_config import make_adapter_config
from edgetune.common.errors import EdgetuneError
from edgetune.common.manifest import write_manifest

TASKS = ("causal-lm",)
METHODS = ("lora", "dora", "qlora")
READS_WEIGHTS = ("dora", "qlora")  # methods whose rewrite reads weight values (see _weights_read)
QUANT_SCHEMES = {"int8": "symmetric, per output channel", "int4": "asymmetric, blockwise along the input dimension"}


def build_bundle(
    model: str,
    out: Path,
    targets: str | None = None,
    spec: LoraSpec = LoraSpec(),
    optimizer: str = "adamw",
    task: str = "causal-lm",
    seed: int = 0,
    force: bool = False,
    method: str = "lora",
    quant: str | None = None,
    block_size: int = 32,
    init_adapter: Path | None = None,
    gradient_checkpointing: bool | None = None,
) -> dict:
    """Build a bundle for `model` into `out` and return its manifest.

    method: lora | dora | qlora. quant (qlora only): int8 | int4; block_size (int4 only):
    32 | 64 | 128. init_adapter: a PEFT adapter folder that sets the adapter's config and
    initial values (then leave targets and spec at their defaults). gradient_checkpointing:
    recompute each decoder layer in the backward pass (default: for qlora only).
    """
    out = Path(out)
    if task not in TASKS:
        raise EdgetuneError(f"unknown task '{task}' (supported: {', '.join(TASKS)})")
    if method not in METHODS:
        raise EdgetuneError(f"unknown method '{method}' (choose: {', '.join(METHODS)})")
    check_quant_args(method, quant, block_size)
    if gradient_checkpointing is None:
        gradient_checkpointing = method == "qlora"
    if init_adapter is not None and (targets is not None or spec != LoraSpec()):
        raise EdgetuneError("init_adapter sets r, lora_alpha, lora_dropout, use_rslora and targets from its "
                            "adapter_config.json: do not pass targets or LoRA settings as well")
    if out.exists() and any(out.iterdir()) and not force:
        raise EdgetuneError(f"{out}: already exists (use --force to replace it)")
    source = load_source(model)
    arch = get_architecture(source.model.config.model_type)
    if init_adapter is None:
        leaf_targets = resolve_targets(arch, targets)
        config_targets = list(leaf_targets)
        selected = lambda path: path.rsplit(".", 1)[-1] in leaf_targets  # noqa: E731
    else:
        peft_config, spec = read_init_adapter(Path(init_adapter), arch)
        method = _imported_method(peft_config, method, init_adapter)
        config_targets = peft_config["target_modules"]
        selected = target_matcher(config_targets, arch)

    with atomic_folder(out, "building") as tmp:
        staging = WeightStore(tmp / STAGING_WEIGHTS)
        train_path, infer_path = export_graphs(source.model, tmp, staging)
        hf_config = source.model.config
        source.tokenizer.save_pretrained(tmp)
        hf_config.save_pretrained(tmp)
        if source.model.generation_config is not None:
            source.model.generation_config.save_pretrained(tmp)
        del source.model
        gc.collect()

        train_graph = load_exported(train_path)
        train_sites = _sites(train_graph, arch, selected, config_targets)
        if method in READS_WEIGHTS:
            load_weights(train_graph, _weights_read(train_graph, train_sites, method), tmp)
        if init_adapter is None:
            weights = _fresh_adapter(train_graph, train_sites, spec, method, seed)
        else:
            weights = import_weights(Path(init_adapter), train_sites, peft_config, source.weights_sha256)
        trainable = _rewrite(train_graph, train_sites, spec, weights, method, quant, block_size, training=True)
        drop_nan_guards(train_graph.graph)
        add_causal_lm_loss(train_graph)
        head_slices = {}  # a tied head's int8 chunks -> parts of the embedding table (see quantize_lm_head)
        if method == "qlora":  # the head reads the loss block's labelled rows
            head_slices = quantize_lm_head(train_graph, training=True)
        _checked(train_graph, train_path, staging, keep=set(trainable))  # ORT reads adapter values inline
        graphs = generate_training_artifacts(train_graph, trainable, optimizer, tmp)
        training = graphs[tmp / names.TRAINING_MODEL]
        if gradient_checkpointing:
            _checkpoint_layers(training.graph)
        else:
            recompute_attention_probs(training.graph)
        if quant is not None:  # float weights rebuilt per use, not kept from forward to backward
            recompute_dequantized_weights(training)
        del train_graph

        infer_graph = load_exported(infer_path)
        infer_sites = _sites(infer_graph, arch, selected, config_targets)
        if [s.module_path for s in train_sites] != [s.module_path for s in infer_sites]:
            raise EdgetuneError("the training and inference exports disagree on the adapted layers")
        if method == "qlora":
            load_weights(infer_graph, _weights_read(infer_graph, infer_sites, method), tmp)
        _rewrite(infer_graph, infer_sites, spec, None, method, quant, block_size, training=False)
        if method == "qlora" and quantize_lm_head(infer_graph, training=False) != head_slices:
            raise EdgetuneError("the training and inference exports disagree on the LM head")
        _checked(infer_graph, infer_path, staging)
        graphs[tmp / names.INFERENCE_MODEL] = infer_graph
        staging.close()

        share_base_weights(graphs, tmp, head_slices)  # each graph saved once, pointing into base_weights.bin
        for path in (train_path, infer_path, staging.path):
            path.unlink()
        onnx.checker.check_model(tmp / names.INFERENCE_MODEL)  # its references into base_weights.bin
        opset = next(o.version for o in infer_graph.opset_import if o.domain in ("", "ai.onnx"))
        manifest = write_manifest(tmp, {
            "kind": "bundle",
            "edgetune_version": edgetune.__version__,
            "onnxruntime_version": onnxruntime.__version__,
            "source": {"model": model, "weights_sha256": source.weights_sha256},
            "architecture": arch.model_type,
            "task": task,
            "optimizer": optimizer,
            "method": method,
            "quantization": None if quant is None else {
                "type": quant, "scheme": QUANT_SCHEMES[quant],
                **({"block_size": block_size} if quant == "int4" else {}),
            },
            "adapter_config": make_adapter_config(
                model, config_targets, spec.rank, spec.alpha, spec.dropout,
                arch.fan_in_fan_out, spec.use_rslora, use_dora=method == "dora",
            ),
            "adapted_modules": [s.module_path for s in train_sites],
            "gradient_checkpointing": gradient_checkpointing,
            "init_seed": seed,
            "init_adapter": None if init_adapter is None else str(init_adapter),
            "onnx": {"opset": opset, "ir_version": infer_graph.ir_version},
        })
    return manifest


def _checked(graph: onnx.ModelProto, path: Path, store: WeightStore, keep: set[str] = frozenset()) -> None:
    """Move the graph's large tensors (but `keep`) to `store`, save it at `path` and check the file.

    By path, because the checker resolves external data relative to the model file and
    a proto in memory is limited to 2 GB.
    """
    store.externalize(graph, keep)
    onnx.save(graph, path)
    onnx.checker.check_model(path)


def _checkpoint_layers(graph: onnx.GraphProto) -> None:
    """Recompute every decoder layer in the backward pass, or fail if the graph shows none."""
    if recompute_layers(graph) == 0:
        raise EdgetuneError("gradient checkpointing found no decoder layer in the training graph "
                            "(node names without layers.N or h.N)")


def _weights_read(graph: onnx.ModelProto, sites, method: str) -> set[str]:
    """DoRA reads the adapted layers' weights; QLoRA quantizes every 2-D float constant it may."""
    if method == "qlora":
        return {t.name for t in graph.graph.initializer if len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT}
    return {s.weight for s in sites}


def _imported_method(config: dict, method: str, folder) -> str:
    """A DoRA adapter makes a DoRA bundle; a LoRA one a LoRA or QLoRA bundle."""
    if config.get("use_dora") and method == "lora":
        return "dora"
    if config.get("use_dora") and method == "qlora":
        raise EdgetuneError(f"{folder}: a DoRA adapter cannot start a qlora bundle "
                            "(DoRA over quantized weights is not supported)")
    if method == "dora" and not config.get("use_dora"):
        raise EdgetuneError(f"{folder}: method=dora needs a DoRA adapter "
                            "(use_dora is false in its adapter_config.json)")
    return method


def _fresh_adapter(graph, sites, spec: LoraSpec, method: str, seed: int) -> dict:
    """PEFT's initial adapter in graph layout: A kaiming-uniform, B = 0, DoRA's m = ‖W + s·B·A‖ = ‖W‖."""
    weights = lora.init_adapter(sites, spec, seed)
    if method == "dora":
        weights |= weight_norms(graph, sites, spec.scaling, weights)
    return weights


def _rewrite(graph, sites, spec, weights, method, quant, block_size, training: bool) -> list[str]:
    """Quantize (qlora) and add the adapter branches to one graph; return the adapter tensor names."""
    if method == "qlora":
        quantize_frozen_base(graph, quant, block_size, training)
    if method == "dora":
        return add_dora(graph, sites, spec, weights, training)
    return add_lora(graph, sites, spec, weights, training)


def _sites(graph: onnx.ModelProto, arch, selected, targets: list[str] | str):
    """The Linear sites of `graph` whose module path is selected."""
    sites = [s for s in find_linears(graph.graph, arch) if selected(s.module_path)]
    if not sites:
        found = sorted({s.module_path.rsplit(".", 1)[-1] for s in find_linears(graph.graph, arch)})
        shown = targets if isinstance(targets, str) else ",".join(targets)
        raise EdgetuneError(f"targets {shown} match no layer in the graph (found: {', '.join(found)})")
    return sites
