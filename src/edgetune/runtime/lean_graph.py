"""The base-model serving graph: serve.onnx without the adapter bank and the prompt prefix.

A decode step whose rows all run the base model (slot 0 of the bank, whose adapters are
zeros) and that continues no prompt (an empty prefix) computes exactly what this graph
computes: each LoRA branch adds x·0·0 = 0, each prefix Concat adds nothing. Dropping
them removes about a sixth of a step's nodes (SmolLM2: 5 per adapted Linear, 4 per layer),
whose dispatch costs more than their arithmetic at one row. The engine runs a step here
when it can (`engine.Engine._run`), and on the full graph otherwise.

Derived when the engine opens a bundle, from the structure the builder writes
(`builder/rewrites/serve/adapter_bank.py`, `attention.py`):
    bank branch   every node named under `branch_prefix(module)/` except the one writing
                  `base_output(module)`; the one node outside it that reads the branch (its
                  join, writing the Linear's output y) is dropped and y read as the base output
    prefix        Concat(prefix_*, x) is read as x; Slice(x, prefix_length, ...) as x

Given one adapter's bank tensors, the branches stay and read them as constants instead
(`fold`, for bases whose weights cannot take the adapter in): each Gather(bank, adapter_index)
(B, ...) becomes that slot's tensor as a (1, ...) initializer, which broadcasts over the
batch, so those rows compute what the full graph computes for them.
"""

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgetune.common.errors import BundleError
from edgetune.common.names import PREFIX_KEY, PREFIX_LENGTH, PREFIX_QUERY, PREFIX_VALUE
from edgetune.common.peft import base_output, branch_prefix


def lean_serving_graph(
    model: onnx.ModelProto, modules: list[str], adapter: dict[str, np.ndarray] | None = None
) -> onnx.ModelProto:
    """A copy of the serving graph `model` for decode steps without a prefix, of the base model or, given
    `adapter` (bank input name -> one slot's tensor), of that adapter; `modules` are the adapted ones."""
    lean = onnx.ModelProto()
    lean.CopyFrom(model)
    graph = lean.graph
    aliases: dict[str, str] = {}  # tensor -> the tensor it equals once the bank and prefix are gone
    dropped: set[int] = set()
    for i, node in enumerate(graph.node):
        if _is_prefix_concat(node) or (node.op_type == "Slice" and node.input[1] == PREFIX_LENGTH):
            aliases[node.output[0]] = node.input[1] if node.op_type == "Concat" else node.input[0]
            dropped.add(i)
        elif adapter is not None and node.op_type == "Gather" and node.input[0] in adapter:
            constant = numpy_helper.from_array(adapter[node.input[0]][None].astype(np.float32), f"{node.input[0]}/one")
            graph.initializer.append(constant)  # (1, ...): the slot's tensor, for every row
            aliases[node.output[0]] = constant.name
            dropped.add(i)
    for module in modules if adapter is None else ():
        aliases.update(_drop_branch(graph, module, dropped))
    kept = [n for i, n in enumerate(graph.node) if i not in dropped]
    for node in kept:
        for k, name in enumerate(node.input):
            while name in aliases:
                name = aliases[name]
            node.input[k] = name
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unread(graph)
    return lean


def _is_prefix_concat(node: onnx.NodeProto) -> bool:
    """A Concat of a prompt prefix input (keys, values or zero queries) and this run's tensor."""
    if node.op_type != "Concat" or len(node.input) != 2:
        return False
    first = node.input[0]
    return first == PREFIX_QUERY or first.startswith((PREFIX_KEY, PREFIX_VALUE))


def _drop_branch(graph: onnx.GraphProto, module: str, dropped: set[int]) -> dict[str, str]:
    """Mark `module`'s bank branch and its join dropped; return {join output: base output}."""
    prefix, base = branch_prefix(module) + "/", base_output(module)
    branch = {i for i, n in enumerate(graph.node) if n.name.startswith(prefix) and base not in n.output}
    written = {o for i in branch for o in graph.node[i].output}
    joins = [i for i, n in enumerate(graph.node) if i not in branch and any(x in written for x in n.input)]
    if not branch or len(joins) != 1:
        raise ValueError(f"{module}: the serving graph's adapter branch is not as the builder writes it")
    dropped.update(branch, joins)
    return {graph.node[joins[0]].output[0]: base}


def _drop_unread(graph: onnx.GraphProto) -> None:
    """Remove the graph inputs and initializers no node reads any more (the bank, adapter_index, the prefix)."""
    read = {x for n in graph.node for x in n.input}
    inputs = [i for i in graph.input if i.name in read]
    initializers = [t for t in graph.initializer if t.name in read]
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def open_beside(model: onnx.ModelProto, folder: Path, open_session):
    """`open_session(path)` on `model` saved in a temporary folder that links `folder`'s external-data files.

    ORT 1.19 reads external data next to the model file; the links let the lean graph read
    the bundle's weight files where they are, and go once the session has loaded them.
    """
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    with tempfile.TemporaryDirectory(prefix="edgetune-lean-") as tmp:
        for location in locations:
            if os.path.basename(location) != location:
                raise BundleError(f"{folder}: external data {location!r} is not a file of the bundle folder")
            os.symlink(folder.resolve() / location, Path(tmp) / location)
        path = Path(tmp) / "serve_lean.onnx"
        onnx.save(model, path)
        return open_session(path)
