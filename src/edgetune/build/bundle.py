"""`edgetune build`: HF model -> bundle folder a device can train and serve from.

    load -> export (no-past, with-past) -> LoRA rewrite + loss -> training artifacts
         -> inference graph -> base weights shared once -> tokenizer, config -> manifest

Everything is written into a temporary sibling folder that is renamed into place at the
end, so an interrupted build never leaves a half bundle.
"""

import gc
import shutil
import tempfile
from pathlib import Path

import onnx
import onnxruntime

import edgetune
from edgetune.build.artifacts import generate_training_artifacts
from edgetune.build.export import export_graphs, load_exported
from edgetune.build.graph import find_linears
from edgetune.build.lora import LoraSpec, add_lora, init_adapter
from edgetune.build.loss import add_causal_lm_loss
from edgetune.build.registry import get_architecture, resolve_targets
from edgetune.build.source import load_source
from edgetune.build.weights import share_base_weights
from edgetune.common import names
from edgetune.common.adapter_config import make_adapter_config
from edgetune.common.errors import EdgetuneError
from edgetune.common.manifest import write_manifest

TASKS = ("causal-lm",)


def build_bundle(
    model: str,
    out: Path,
    targets: str | None = None,
    spec: LoraSpec = LoraSpec(),
    optimizer: str = "adamw",
    task: str = "causal-lm",
    seed: int = 0,
    force: bool = False,
) -> dict:
    """Build a bundle for `model` into `out` and return its manifest."""
    out = Path(out)
    if task not in TASKS:
        raise EdgetuneError(f"unknown task '{task}' (supported: {', '.join(TASKS)})")
    if out.exists() and any(out.iterdir()) and not force:
        raise EdgetuneError(f"{out}: already exists (use --force to replace it)")
    source = load_source(model)
    arch = get_architecture(source.model.config.model_type)
    leaf_targets = resolve_targets(arch, targets)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        train_path, infer_path = export_graphs(source.model, tmp / "export")
        hf_config, vocab_size = source.model.config, source.model.config.vocab_size
        source.tokenizer.save_pretrained(tmp)
        hf_config.save_pretrained(tmp)
        if source.model.generation_config is not None:
            source.model.generation_config.save_pretrained(tmp)
        del source.model
        gc.collect()

        train_graph = load_exported(train_path)
        train_sites = _sites(train_graph, arch, leaf_targets)
        weights = init_adapter(train_sites, spec, seed)
        trainable = add_lora(train_graph, train_sites, spec, weights, training=True)
        add_causal_lm_loss(train_graph, vocab_size)
        onnx.checker.check_model(train_graph)
        generate_training_artifacts(train_graph, trainable, optimizer, tmp)
        del train_graph

        infer_graph = load_exported(infer_path)
        infer_sites = _sites(infer_graph, arch, leaf_targets)
        if [s.module_path for s in train_sites] != [s.module_path for s in infer_sites]:
            raise EdgetuneError("the training and inference exports disagree on the adapted layers")
        add_lora(infer_graph, infer_sites, spec, None, training=False)
        onnx.checker.check_model(infer_graph)
        onnx.save(infer_graph, tmp / names.INFERENCE_MODEL)
        del infer_graph
        shutil.rmtree(tmp / "export")

        share_base_weights(
            [tmp / names.TRAINING_MODEL, tmp / names.EVAL_MODEL, tmp / names.INFERENCE_MODEL]
        )
        inference = onnx.load(tmp / names.INFERENCE_MODEL, load_external_data=False)
        opset = next(o.version for o in inference.opset_import if o.domain in ("", "ai.onnx"))
        manifest = write_manifest(tmp, {
            "kind": "bundle",
            "edgetune_version": edgetune.__version__,
            "onnxruntime_version": onnxruntime.__version__,
            "source": {"model": model, "weights_sha256": source.weights_sha256},
            "architecture": arch.model_type,
            "task": task,
            "optimizer": optimizer,
            "adapter_config": make_adapter_config(
                model, list(leaf_targets), spec.rank, spec.alpha, spec.dropout,
                arch.fan_in_fan_out, spec.use_rslora,
            ),
            "adapted_modules": [s.module_path for s in train_sites],
            "init_seed": seed,
            "onnx": {"opset": opset, "ir_version": inference.ir_version},
        })
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sites(graph: onnx.ModelProto, arch, leaf_targets: tuple[str, ...]):
    """The Linear sites of `graph` whose leaf module name is a target."""
    sites = [s for s in find_linears(graph.graph, arch) if s.module_path.rsplit(".", 1)[-1] in leaf_targets]
    if not sites:
        found = sorted({s.module_path.rsplit(".", 1)[-1] for s in find_linears(graph.graph, arch)})
        raise EdgetuneError(f"targets {','.join(leaf_targets)} match no layer in the graph (found: {', '.join(found)})")
    return sites
