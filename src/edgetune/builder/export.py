"""Optimum export: a causal LM's no-past graph to train and with-past graph to serve, or an encoder's one graph.

The weights never pass through a serialized ModelProto. torch's TorchScript exporter
would build the whole model as one in-memory protobuf (the proto, its serialized string
and a Python copy: three copies of every weight, the build's peak) and cannot write a
model under 2 GB any other way. So the export runs with `export_params=False`, which
leaves the weights as graph inputs, while the exporter's own constant-folded parameter
values are taken from `_model_to_graph` and streamed into a `WeightStore`; the graph gets
them back as external-data initializers. Graph and values are exactly those of a normal
export (same nodes, same names, same folded tensors).
"""

import contextlib
import functools
import io
import logging
import shutil
from pathlib import Path

import onnx
from onnx import helper, numpy_helper
from optimum.exporters.onnx import onnx_export_from_model
from transformers import PreTrainedModel

from edgetune.builder.rewrites.export_fixes import expose_saved_outputs, materialize_identity_initializers
from edgetune.builder.weights import MIN_EXTERNAL_BYTES, WeightStore
from edgetune.common.errors import EdgetuneError

TASKS = ("text-generation", "text-generation-with-past")


def export_graphs(
    model: PreTrainedModel, work_dir: Path, store: WeightStore, tasks: tuple[str, str] = TASKS
) -> tuple[Path, Path]:
    """Export `model` into `work_dir` for Optimum's (training, inference) `tasks`; return the two graphs' paths.

    Their weights go to `store`, which must lie in `work_dir`. Post-processing is off:
    Optimum's tied-weight deduplication breaks gradient generation, and equal tensors
    are stored once anyway. Only one export's folded weights are held at a time. When
    both tasks are the same (an encoder), the one export is copied for the second graph.
    """
    paths = []
    for i, task in enumerate(tasks):
        if i and task == tasks[0]:
            paths.append(work_dir / f"export.{task}.inference.onnx")
            shutil.copyfile(paths[0], paths[-1])
            continue
        out = work_dir / "export" / task
        params: dict = {}
        with _quiet(), _weights_handed_over(params):
            onnx_export_from_model(model, out, task=task, no_post_process=True, do_validation=False)
        graph = onnx.load(out / "model.onnx")  # structure only: a few MB
        _attach_weights(graph, params, store)
        params.clear()  # the folded copies of this export
        paths.append(work_dir / f"export.{task}.onnx")
        onnx.save(graph, paths[-1])
        shutil.rmtree(work_dir / "export")
    return paths[0], paths[1]


def load_exported(path: Path) -> onnx.ModelProto:
    """Load an exported graph (weights stay on disk) and make it fit for ORT's gradient builder."""
    graph = onnx.load(path, load_external_data=False)
    materialize_identity_initializers(graph.graph)
    expose_saved_outputs(graph.graph)
    return graph


def _attach_weights(model: onnx.ModelProto, params: dict, store: WeightStore) -> None:
    """Turn the weight inputs of an `export_params=False` graph into initializers, large ones in `store`."""
    if not params:
        raise EdgetuneError("the ONNX export handed over no weights (the build expects torch 2.13's exporter)")
    graph = model.graph
    inputs = []
    for value in graph.input:
        if value.name not in params:
            inputs.append(value)
            continue
        array = params[value.name].detach().cpu().contiguous().numpy()
        if array.nbytes < MIN_EXTERNAL_BYTES:
            graph.initializer.append(numpy_helper.from_array(array, value.name))
            continue
        tensor = onnx.TensorProto(
            name=value.name, dims=array.shape, data_type=helper.np_dtype_to_tensor_dtype(array.dtype)
        )
        store.put(tensor, array)
        graph.initializer.append(tensor)
    del graph.input[:]
    graph.input.extend(inputs)


@contextlib.contextmanager
def _weights_handed_over(params: dict):
    """While Optimum exports: torch leaves the weights out of the ONNX file and puts them in `params`.

    Wraps torch.onnx.export (export_params=False; Optimum looks it up at call time) and
    the TorchScript exporter's `_model_to_graph`, whose result holds the parameter values
    after constant folding, under the names the graph uses.
    """
    import torch

    try:
        from torch.onnx._internal.torchscript_exporter import utils as torchscript
    except ImportError:
        raise EdgetuneError(
            f"torch {torch.__version__} has no TorchScript ONNX exporter where the build "
            "expects it (torch.onnx._internal.torchscript_exporter; torch 2.13 has)"
        ) from None
    export, model_to_graph = torch.onnx.export, torchscript._model_to_graph

    def handing_over(*args, **kwargs):
        graph, params_dict, out = model_to_graph(*args, **kwargs)
        params.update(params_dict)
        return graph, params_dict, out

    torch.onnx.export = functools.partial(export, export_params=False)
    torchscript._model_to_graph = handing_over
    try:
        yield
    finally:
        torch.onnx.export, torchscript._model_to_graph = export, model_to_graph


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
