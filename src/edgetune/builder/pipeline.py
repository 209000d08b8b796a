"""`edgetune build` as a recipe: HF model -> bundle folder a device can train and serve from.

    plan       the architecture, the adapter (fresh, or from a PEFT folder) and its method variant
    export     Optimum exports a no-past graph (to train) and a with-past graph (to serve);
               weights go straight to a staging file, graphs are handled as structure only
    prepare    each graph, the same steps for both (GraphRole says what differs): find the
               adapted layers, read the weights the rewrite needs, rewrite (quantize, add the
               adapter), the loss (training), the LM head, save
    artifacts  ORT's training, eval and optimizer models and the checkpoint; then the
               backward-pass rewrites (checkpointing or attention recompute, dequantization)
    bundle     base weights shared once in base_weights.bin, tokenizer and configs, manifest

Everything is written into a temporary sibling folder that is renamed into place at the
end, so an interrupted build never leaves a half bundle. Components live in `builder/`
(stages) and `builder/rewrites/` (one graph rewrite per module); the methods in `methods`.
"""

import gc
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime

import edgetune
from edgetune.builder.artifacts import generate_training_artifacts
from edgetune.builder.export import export_graphs, load_exported
from edgetune.builder.graph import LinearSite, find_linears
from edgetune.builder.init_adapter import import_weights, read_init_adapter, target_matcher
from edgetune.builder.methods import LoraVariant, variant_for
from edgetune.builder.registry import Architecture, get_architecture, resolve_targets
from edgetune.builder.rewrites.base_delta import add_base_delta
from edgetune.builder.rewrites.head import add_head, head_initializers, source_tensors
from edgetune.builder.rewrites.nan_guards import drop_nan_guards
from edgetune.builder.rewrites.recompute.attention import recompute_attention_probs
from edgetune.builder.rewrites.recompute.layers import recompute_layers
from edgetune.builder.serving import prepare_serving_graph, save_serving_graph
from edgetune.builder.source import Loader, Source, load_source
from edgetune.builder.tasks import TASKS, Task
from edgetune.builder.weights import STAGING_WEIGHTS, WeightFiles, WeightStore, load_weights, share_base_weights
from edgetune.common import names
from edgetune.common.atomic import atomic_folder
from edgetune.common.bundle import sign_manifest
from edgetune.common.errors import ConfigError, EdgetuneError, InternalError
from edgetune.common.manifest import write_manifest
from edgetune.common.peft import DELTA_SUFFIX, make_adapter_config
from edgetune.common.trust import load_private_key
from edgetune.options import BuildConfig, LoraSpec

QUANT_SCHEMES = {"int8": "symmetric, per output channel", "int4": "asymmetric, blockwise along the input dimension"}


@dataclass(frozen=True)
class GraphRole:
    """What one exported graph is for; the only difference between preparing the two."""

    name: str
    training: bool  # adapter tensors trainable initializers, dropout on, loss added (else graph inputs)


TRAINING = GraphRole("training", training=True)
INFERENCE = GraphRole("inference", training=False)
SERVING = GraphRole("serving", training=False)  # built from the with-past export by `builder.serving`


@dataclass(frozen=True)
class AdapterPlan:
    """The adapter every graph gets: where, how big, by which method, starting from what."""

    arch: Architecture
    task: Task
    head: tuple[str, ...]  # the task head's modules (PEFT's modules_to_save); () for a causal LM
    variant: LoraVariant
    spec: LoraSpec
    targets: list[str] | str  # as written in adapter_config.json
    selected: Callable[[str], bool]  # module path -> adapted?
    init_adapter: Path | None
    peft_config: dict | None  # the init adapter's config
    gradient_checkpointing: bool
    trainable: str = "all"  # options.TRAINABLE: all adapter tensors, or lora_B only
    base_delta: bool = False  # W + Δ on every adapted layer, Δ frozen in the checkpoint

    def trains(self, name: str) -> bool:
        """Whether tensor `name` gets gradients; the others are frozen parameters kept in the checkpoint."""
        if name.endswith(DELTA_SUFFIX):
            return False  # FedEx's base delta: set by the server, never trained
        return self.trainable == "all" or not name.endswith(".lora_A.weight")  # lora_B: A frozen, head trains


@dataclass
class PreparedGraph:
    """A rewritten graph, saved at `path`, with what the later stages need from it."""

    model: onnx.ModelProto
    path: Path
    sites: list[LinearSite]
    trainable: list[str]
    frozen: list[str]  # parameters kept in the checkpoint without gradients
    head_slices: dict[str, tuple[str, int]]
    head_shapes: dict[str, list[int]]  # an encoder's head tensors: PEFT key -> shape in PEFT layout


def build_bundle(config: BuildConfig) -> dict:
    """Build a bundle for `config.model` into `config.out` and return its manifest."""
    _check_output(config)
    if config.sign is not None:
        load_private_key(config.sign)  # a bad key fails now, not after the build
    task = TASKS[config.task]
    source = load_source(config.model, Loader(task.auto_class, config.labels, config.seed))
    hf_config = source.model.config
    plan = plan_adapter(config, get_architecture(hf_config.model_type), task)
    with atomic_folder(config.out, "building") as tmp:
        staging = WeightStore(tmp / STAGING_WEIGHTS)
        exported = export_stage(source, tmp, staging, plan.task)
        if not task.encoder:  # a causal LM gets the serving graph from the with-past export
            exported[SERVING] = tmp / "export.serving.onnx"
            shutil.copyfile(exported[INFERENCE], exported[SERVING])  # structure only: the weights are in staging
        training = prepare_graph(exported[TRAINING], TRAINING, plan, config.seed, source, staging)
        graphs = artifacts_stage(training, plan, config.optimizer)
        inference = prepare_graph(exported[INFERENCE], INFERENCE, plan, config.seed, source, staging)
        _check_agree(training, inference)
        graphs[tmp / names.INFERENCE_MODEL] = inference.model
        serving = None
        if SERVING in exported:
            serving = prepare_serving_graph(
                exported[SERVING], plan, hf_config, lambda model: _sites(model, plan), config.serve_quant
            )
        staging.close()
        share_base_weights(graphs, tmp, training.head_slices)  # each graph saved once, pointing into base_weights.bin
        if serving is not None:
            save_serving_graph(serving, tmp, {t.name: t for t in inference.model.graph.initializer})
        for path in (*exported.values(), staging.path):
            path.unlink()
        manifest = bundle_stage(tmp, config, plan, source, training, inference)
        if config.sign is not None:
            sign_manifest(tmp, config.sign)
        return manifest


def plan_adapter(config: BuildConfig, arch: Architecture, task: Task) -> AdapterPlan:
    """The adapter from the config, or from the init adapter's adapter_config.json."""
    head = arch.head_modules(task.name)
    if task.encoder != bool(arch.heads) or (task.encoder and not head):
        raise ConfigError("task", _task_mismatch(arch, task))
    if config.init_adapter is None:
        leaf_targets = resolve_targets(arch, config.targets)
        spec, peft_config, targets = config.spec, None, list(leaf_targets)
        selected = lambda path: path.rsplit(".", 1)[-1] in leaf_targets
    else:
        peft_config, spec = read_init_adapter(config.init_adapter, arch)
        targets = peft_config["target_modules"]
        selected = target_matcher(targets, arch)
    variant = variant_for(config, peft_config)
    checkpointing = config.gradient_checkpointing
    if checkpointing is None:
        checkpointing = variant.checkpointing_by_default
    return AdapterPlan(
        arch,
        task,
        head,
        variant,
        spec,
        targets,
        selected,
        config.init_adapter,
        peft_config,
        checkpointing,
        config.trainable,
        config.base_delta,
    )


def export_stage(source: Source, tmp: Path, staging: WeightStore, task: Task) -> dict[GraphRole, Path]:
    """Export both graphs, save the tokenizer and configs, and free the torch model."""
    train_path, infer_path = export_graphs(source.model, tmp, staging, task.exports, source.placeholders)
    source.tokenizer.save_pretrained(tmp)
    source.model.config.save_pretrained(tmp)
    if source.model.generation_config is not None:
        source.model.generation_config.save_pretrained(tmp)
    source.model = source.placeholders = None
    gc.collect()
    return {TRAINING: train_path, INFERENCE: infer_path}


def prepare_graph(
    path: Path, role: GraphRole, plan: AdapterPlan, seed: int, source: Source, staging: WeightStore
) -> PreparedGraph:
    """Load one exported graph, add the adapter (and, for training, the loss), and save it in place."""
    model = load_exported(path)
    files = WeightFiles(path.parent, staging)  # the weights stay on disk; rewrites read them one at a time
    sites = _sites(model, plan)
    head = head_initializers(model.graph, plan.head)  # an encoder's task head, trained whole
    load_weights(model, source_tensors(model.graph, head), path.parent)  # its values become the head's
    head_keys = add_head(model, head, role.training) if head else []  # before the method: QLoRA leaves it float
    weights = _initial_weights(model, sites, plan, seed, source, files) if role.training else None
    params = plan.variant.rewrite(model, sites, plan.spec, weights, role.training, files) + head_keys
    if role.training and plan.base_delta:
        params += add_base_delta(model, sites)
    if role.training:
        drop_nan_guards(model.graph)
        plan.task.add_loss(model)
    head_slices = {}
    if plan.task.lm_head:  # after the loss: it reads the labelled rows
        head_slices = plan.variant.rewrite_head(model, role.training, files)
    head_shapes = _head_shapes(model, head_keys, role.training)
    staging.externalize(model, keep=set(params) if role.training else set())  # ORT reads adapter values inline
    onnx.save(model, path)
    onnx.checker.check_model(path)  # by path: external data resolves next to it, and no 2 GB proto limit
    if not role.training:
        return PreparedGraph(model, path, sites, [], [], head_slices, head_shapes)
    trainable = [n for n in params if plan.trains(n)]
    frozen = [n for n in params if n not in trainable]
    return PreparedGraph(model, path, sites, trainable, frozen, head_slices, head_shapes)


def artifacts_stage(training: PreparedGraph, plan: AdapterPlan, optimizer: str) -> dict[Path, onnx.ModelProto]:
    """ORT's training artifacts, then the backward-pass rewrites; returns the training and eval models."""
    graphs = generate_training_artifacts(
        training.model, training.trainable, training.frozen, optimizer, training.path.parent
    )
    backward = graphs[training.path.parent / names.TRAINING_MODEL]
    if plan.gradient_checkpointing:
        if recompute_layers(backward.graph) == 0:
            raise EdgetuneError(
                "gradient checkpointing found no decoder layer in the training graph "
                "(node names without layers.N or h.N)"
            )
    else:
        recompute_attention_probs(backward.graph)
    plan.variant.rewrite_backward(backward)
    training.model = None  # the artifacts replace it
    return graphs


def bundle_stage(
    tmp: Path, config: BuildConfig, plan: AdapterPlan, source: Source, training: PreparedGraph, inference: PreparedGraph
) -> dict:
    """Check the inference graph's file and write the manifest; returns it."""
    onnx.checker.check_model(tmp / names.INFERENCE_MODEL)  # its references into base_weights.bin
    model = inference.model
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    quant = plan.variant.quant
    spec = plan.spec
    return write_manifest(
        tmp,
        {
            "kind": "bundle",
            "edgetune_version": edgetune.__version__,
            "onnxruntime_version": onnxruntime.__version__,
            "source": {"model": config.model, "weights_sha256": source.weights_sha256},
            "architecture": plan.arch.model_type,
            "task": config.task,
            "optimizer": config.optimizer,
            "method": plan.variant.name,
            "quantization": None
            if quant is None
            else {
                "type": quant,
                "scheme": QUANT_SCHEMES[quant],
                **({"block_size": plan.variant.block_size} if quant == "int4" else {}),
            },
            "adapter_config": make_adapter_config(
                config.model,
                plan.targets,
                spec.rank,
                spec.alpha,
                spec.dropout,
                plan.arch.fan_in_fan_out,
                spec.use_rslora,
                use_dora=plan.variant.use_dora,
                task_type=plan.task.peft_task_type,
                modules_to_save=list(plan.head) or None,
            ),
            "adapted_modules": [s.module_path for s in training.sites],
            **(
                {"serving": {"file": names.SERVE_MODEL, "quant": plan.variant.quant or config.serve_quant}}
                if not plan.task.encoder
                else {}
            ),
            **_task_fields(config, plan, training),
            "gradient_checkpointing": plan.gradient_checkpointing,
            "init_seed": config.seed,
            "init_adapter": None if config.init_adapter is None else str(config.init_adapter),
            "onnx": {"opset": opset, "ir_version": model.ir_version},
            **({"trainable": plan.trainable} if plan.trainable != "all" else {}),  # absent: every adapter tensor
            **({"base_delta": True} if plan.base_delta else {}),
            **plan.variant.manifest_fields(),
        },
    )


def _task_fields(config: BuildConfig, plan: AdapterPlan, training: PreparedGraph) -> dict:
    """An encoder bundle's labels and head tensors (a causal-LM manifest has neither)."""
    if not plan.task.encoder:
        return {}
    return {"labels": list(config.labels or ()), "head_tensors": training.head_shapes}


def _check_output(config: BuildConfig) -> None:
    """Refuse to overwrite a non-empty output folder without force."""
    out = config.out
    if out.exists() and any(out.iterdir()) and not config.force:
        raise ConfigError("out", f"{out} already exists (use force to replace it)")


def _initial_weights(model, sites, plan: AdapterPlan, seed: int, source: Source, files: WeightFiles) -> dict:
    """The adapter's starting values in graph layout: fresh, or the init adapter's."""
    if plan.init_adapter is None:
        return plan.variant.initial_weights(model, sites, plan.spec, seed, files)
    return import_weights(plan.init_adapter, sites, plan.peft_config, source.weights_sha256)


def _check_agree(training: PreparedGraph, inference: PreparedGraph) -> None:
    """The two exports must adapt the same layers and share the LM head's storage."""
    if [s.module_path for s in training.sites] != [s.module_path for s in inference.sites]:
        raise InternalError("the training and inference exports disagree on the adapted layers")
    if training.head_shapes != inference.head_shapes:
        raise InternalError("the training and inference exports disagree on the task head")
    if inference.head_slices != training.head_slices:
        raise InternalError("the training and inference exports disagree on the LM head")


def _head_shapes(model: onnx.ModelProto, keys: list[str], training: bool) -> dict[str, list[int]]:
    """The head tensors' shapes in PEFT layout (the graph holds them transposed)."""
    values = model.graph.initializer if training else model.graph.input
    shapes = {}
    for value in values:
        if value.name in keys:
            dims = value.dims if training else [d.dim_value for d in value.type.tensor_type.shape.dim]
            shapes[value.name] = list(reversed(dims))
    return {key: shapes[key] for key in keys}


def _task_mismatch(arch: Architecture, task: Task) -> str:
    """Why `task` does not fit `arch`: an encoder needs an encoder task, a causal LM causal-lm."""
    if task.encoder:
        return f"{task.name} needs an encoder model; {arch.model_type} is a causal LM (use causal-lm)"
    tasks = ", ".join(name for name, _ in arch.heads)
    return f"{arch.model_type} is an encoder: build it for one of {tasks}"


def _in_head(path: str, head: tuple[str, ...]) -> bool:
    """Whether module `path` belongs to the task head (trained whole, so never LoRA-adapted, as in PEFT)."""
    return any(path == m or path.startswith(m + ".") for m in head)


def _sites(model: onnx.ModelProto, plan: AdapterPlan) -> list[LinearSite]:
    """The Linear sites of `model` whose module path is selected (the task head's are not)."""
    linears = [s for s in find_linears(model.graph, plan.arch) if not _in_head(s.module_path, plan.head)]
    sites = [s for s in linears if plan.selected(s.module_path)]
    if not sites:
        found = sorted({s.module_path.rsplit(".", 1)[-1] for s in linears})
        shown = plan.targets if isinstance(plan.targets, str) else ",".join(plan.targets)
        raise ConfigError("targets", f"{shown} match no layer in the graph (found: {', '.join(found)})")
    return sites
