"""Optimum export of a causal LM: a no-past graph to train, a with-past graph to serve."""

import contextlib
import io
import logging
from pathlib import Path

import onnx
from optimum.exporters.onnx import onnx_export_from_model
from transformers import PreTrainedModel

from edgetune.build.graph import expose_saved_outputs, materialize_identity_initializers


def export_graphs(model: PreTrainedModel, work_dir: Path) -> tuple[Path, Path]:
    """Export `model` twice; return the paths of (training graph, inference graph).

    Post-processing is off: Optimum's tied-weight deduplication breaks gradient
    generation, and equal tensors are stored once later anyway. The graphs stay on disk
    so the caller can free the torch model before loading them one at a time.
    """
    paths = []
    for task in ("text-generation", "text-generation-with-past"):
        out = work_dir / task
        with _quiet():
            onnx_export_from_model(model, out, task=task, no_post_process=True, do_validation=False)
        paths.append(out / "model.onnx")
    return paths[0], paths[1]


def load_exported(path: Path) -> onnx.ModelProto:
    """Load an exported graph and make it fit for ORT's gradient builder."""
    graph = onnx.load(path)
    materialize_identity_initializers(graph.graph)
    expose_saved_outputs(graph.graph)
    return graph


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's tracer warnings; errors still raise."""
    import warnings

    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)
