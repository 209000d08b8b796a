"""Attention for serving: RotaryEmbedding + GroupQueryAttention over a KV buffer written in place.

The with-past export concatenates the whole KV cache with the new keys every step (a copy
of the cache per token) and computes masks and rotary tables from scratch per run. Here
each layer's attention core, from its q/k/v projections' outputs to the output
projection's input, becomes:

    q, k = RotaryEmbedding(q, position_ids), RotaryEmbedding(k, position_ids)   (rotary families)
    out, present_k, present_v = GroupQueryAttention(q, k, v, past_k, past_v, seqlens_k, total_sequence_length)

`past_key_values.N.*` are (B, kv_heads, capacity, head_dim) buffers that the runtime binds
as both input and output (`present.N.*`), so ORT writes the new keys in place. Per row,
`seqlens_k` is the row's length after this run minus one, so rows of one batch may sit at
different positions (continuous batching). A run with S > 1 is a prompt: ORT 1.19.2's GQA
writes its keys from position 0 and attends only among them, so a prompt continued in
chunks feeds the row's cached keys and values back as a prefix (`prefix_key.N`, ...):
docs/design.md, "Serving graph".
The rotary tables are HF's own (transformers' rope init for the config), per position; the
score scale, sliding windows and per-layer tables come from the config (`attention_config`).
q/k norms between the projections and rotary (Qwen3, Gemma 3) stay: the core starts after them.
"""

import numpy as np
import onnx
from onnx import TensorProto

from edgetune.builder.graph import LinearSite, add_initializer, add_node, make_input, module_path
from edgetune.builder.rewrites.quant.tensors import CONTRIB, use_contrib_opset
from edgetune.builder.rewrites.serve.attention_config import GLOBAL_TABLES
from edgetune.common.errors import EdgetuneError
from edgetune.common.names import (
    PAST,
    POSITION_IDS,
    PREFIX_KEY,
    PREFIX_LENGTH,
    PREFIX_QUERY,
    PREFIX_VALUE,
    PRESENT,
    SEQLENS_K,
    TOTAL_SEQUENCE_LENGTH,
)


def use_group_query_attention(
    model: onnx.ModelProto, layers: list[dict], shape: dict, tables: dict[str, tuple] | None
) -> None:
    """Replace each layer's attention core in place; `layers` gives per layer its q/k/v tensors and o input.

    Each entry: {"index": N, "qkv": [q, k, v] or [fused], "out": tensor the output projection reads,
    "heads": None, or the layout of q and k after q/k norms: "BSHD" (B, S, heads, head_dim) or "BHSD"}.
    `shape`: attention_shape(config).
    tables: name -> HF's (cos, sin) for rotary families, None for learned positions (GPT-2).
    """
    graph = model.graph
    use_contrib_opset(model)
    h, kv, d = shape["heads"], shape["kv_heads"], shape["head_dim"]
    _add_shared_inputs(graph, h * d, tables)
    past_inputs = {i.name: i for i in graph.input if i.name.startswith(PAST)}
    outputs = {o.name: o for o in graph.output}
    new_nodes: list[onnx.NodeProto] = []
    for layer in layers:
        n = layer["index"]
        p = f"/serve/layers.{n}/attn"
        qkv = layer["qkv"]
        if len(qkv) == 1:  # fused projection: split into q, k, v
            add_initializer(graph, f"{p}/split", np.array([h * d, kv * d, kv * d], np.int64))
            split = onnx.helper.make_node("Split", [qkv[0], f"{p}/split"], [f"{p}/q", f"{p}/k", f"{p}/v"], axis=-1)
            split.name = f"{p}/split"
            new_nodes.append(split)
            qkv = [f"{p}/q", f"{p}/k", f"{p}/v"]
        q, k, v = qkv
        if layer["heads"] is not None:  # q and k after the q/k norms -> (B, S, heads·head_dim)
            q, k = (_merge_heads(new_nodes, x, f"{p}/{name}", layer["heads"]) for x, name in ((q, "q"), (k, "k")))
        if tables is not None:
            cache = shape["tables"][n]
            q = _rotary(new_nodes, q, f"{p}/q_rot", h, d, cache, tables[cache])
            k = _rotary(new_nodes, k, f"{p}/k_rot", kv, d, cache, tables[cache])
        q, k, v = _after_prefix(graph, new_nodes, n, q, k, v, kv * d, p)
        past_k, past_v = f"{PAST}{n}.key", f"{PAST}{n}.value"
        present_k, present_v = f"{PRESENT}{n}.key", f"{PRESENT}{n}.value"
        if past_k not in past_inputs or present_k not in outputs:
            raise EdgetuneError(f"the with-past export has no {past_k} / {present_k} for layer {n}")
        attrs = {"num_heads": h, "kv_num_heads": kv}
        if shape["windows"][n] >= 0:
            attrs["local_window_size"] = shape["windows"][n]
        if shape["scale"] is not None:
            attrs["scale"] = shape["scale"]
        gqa = onnx.helper.make_node(
            "GroupQueryAttention",
            [q, k, v, past_k, past_v, SEQLENS_K, TOTAL_SEQUENCE_LENGTH],
            [f"{p}/with_prefix", present_k, present_v],
            name=f"{p}/GroupQueryAttention",
            domain=CONTRIB,
            **attrs,
        )
        new_nodes.append(gqa)
        add_node(  # the chunk's own positions: (B, S, H·D)
            new_nodes,
            "Slice",
            [f"{p}/with_prefix", PREFIX_LENGTH, "/serve/prefix/ends", "/serve/prefix/axes"],
            layer["out"],
        )
    for layer in layers:  # the old producers of the attention outputs and presents go
        _drop_producers(graph, {layer["out"], f"{PRESENT}{layer['index']}.key", f"{PRESENT}{layer['index']}.value"})
    graph.node.extend(new_nodes)
    for value in past_inputs.values():  # (B, kv_heads, capacity, head_dim)
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_param = "capacity"
    for name, value in outputs.items():
        if name.startswith(PRESENT):
            value.type.tensor_type.shape.dim[2].dim_param = "capacity"


def _add_shared_inputs(graph: onnx.GraphProto, query_width: int, tables: dict | None) -> None:
    """The inputs and constants every layer's core reads: positions, GQA's lengths, the prefix, rotary tables."""
    if POSITION_IDS not in {i.name for i in graph.input}:  # Gemma's exports take none (they compute positions)
        graph.input.append(make_input(POSITION_IDS, TensorProto.INT64, ["batch", "sequence"]))
    graph.input.append(make_input(SEQLENS_K, TensorProto.INT32, ["batch"]))
    graph.input.append(make_input(TOTAL_SEQUENCE_LENGTH, TensorProto.INT32, []))
    graph.input.append(make_input(PREFIX_QUERY, TensorProto.FLOAT, ["batch", "prefix", query_width]))
    graph.input.append(make_input(PREFIX_LENGTH, TensorProto.INT64, [1]))
    add_initializer(graph, "/serve/prefix/ends", np.array([np.iinfo(np.int64).max], np.int64))
    add_initializer(graph, "/serve/prefix/axes", np.array([1], np.int64))
    add_initializer(graph, "/serve/heads/merged", np.array([0, 0, -1], np.int64))
    for name, (cos, sin) in (tables or {}).items():
        add_initializer(graph, _cache_name(name, "cos"), cos)
        add_initializer(graph, _cache_name(name, "sin"), sin)


def _after_prefix(graph, nodes: list, n: int, q: str, k: str, v: str, kv_width: int, p: str) -> tuple[str, str, str]:
    """q, k, v after the prefix of a continued prompt: Concat(prefix, x) along the sequence.

    Decoding and first prompts feed empty prefixes (P = 0). A continued prompt's chunk feeds
    the row's cached keys and values (B, P, kv_heads·head_dim) and zero queries (B, P, H·D):
    GQA runs it as one prompt of P + S tokens, rewriting the cached keys with themselves.
    """
    graph.input.append(make_input(f"{PREFIX_KEY}{n}", TensorProto.FLOAT, ["batch", "prefix", kv_width]))
    graph.input.append(make_input(f"{PREFIX_VALUE}{n}", TensorProto.FLOAT, ["batch", "prefix", kv_width]))
    q = add_node(nodes, "Concat", [PREFIX_QUERY, q], f"{p}/q_all", axis=1)
    k = add_node(nodes, "Concat", [f"{PREFIX_KEY}{n}", k], f"{p}/k_all", axis=1)
    v = add_node(nodes, "Concat", [f"{PREFIX_VALUE}{n}", v], f"{p}/v_all", axis=1)
    return q, k, v


def _cache_name(tables: str, part: str) -> str:
    """The initializer holding one rotary table: /serve/rotary/cos, /serve/rotary_local/sin, ..."""
    return f"/serve/rotary/{part}" if tables == GLOBAL_TABLES else f"/serve/rotary_{tables}/{part}"


def _rotary(nodes: list, x: str, out: str, heads: int, head_dim: int, name: str, tables) -> str:
    """RotaryEmbedding of a (B, S, heads·head_dim) tensor at `position_ids` (HF's rotate-half form)."""
    rotary_dim = 2 * tables[0].shape[1]
    attrs = {} if rotary_dim == head_dim else {"num_heads": heads, "rotary_embedding_dim": rotary_dim}
    caches = [_cache_name(name, "cos"), _cache_name(name, "sin")]
    add_node(nodes, "RotaryEmbedding", [x, POSITION_IDS, *caches], out, interleaved=0, **attrs)
    nodes[-1].domain = CONTRIB
    return out


def attention_layers(
    sites: list[LinearSite], graph: onnx.GraphProto, qkv_names: tuple, out_name: str, qk_norms: tuple = ()
) -> list[dict]:
    """Per decoder layer: the tensors holding q, k, v (after any bias) and the tensor the output projection reads.

    `qkv_names` are the module-path suffixes of the projections (one when fused), `out_name`
    the output projection's, `qk_norms` those of norms on q and k between the projections
    and rotary (then q and k are the norms' 4-D outputs, their layout in "heads"). Reshapes
    around a Gemm (GPT-2's 2-D Linear) are looked through.
    """
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    inits = {t.name for t in graph.initializer}
    by_path = {s.module_path: s for s in sites}
    nodes = {n.name: n for n in graph.node}
    layers = []
    layer_paths = {p[: -len(out_name) - 1] for p in by_path if p.endswith(f".{out_name}")}
    for path in sorted(layer_paths, key=_layer_index):
        qkv = [_projected(nodes[by_path[f"{path}.{name}"].node_name], consumers, inits) for name in qkv_names]
        heads = None
        if qk_norms:
            (q, heads), (k, _) = (_module_output(graph, f"{path}.{name}", producers, consumers) for name in qk_norms)
            qkv = [q, k, qkv[2]]
        out_node = nodes[by_path[f"{path}.{out_name}"].node_name]
        x = out_node.input[0]
        if out_node.op_type == "Gemm" and x in producers and producers[x].op_type == "Reshape":
            x = producers[x].input[0]  # the 3-D (B, S, H·D) tensor before the flatten
        layers.append({"index": _layer_index(path), "qkv": qkv, "out": x, "heads": heads})
    if not layers:
        raise EdgetuneError(f"no attention layer found (no Linear named {out_name})")
    return layers


def _projected(node: onnx.NodeProto, consumers: dict, inits: set) -> str:
    """The projection's output after its bias Add and, for a 2-D Gemm, its Reshape back to (B, S, ·)."""
    y = node.output[0]
    while True:
        readers = consumers.get(y, [])
        if len(readers) != 1:
            return y
        reader = readers[0]
        if reader.op_type == "Add" and any(x in inits for x in reader.input):
            y = reader.output[0]
        elif node.op_type == "Gemm" and reader.op_type == "Reshape":
            return reader.output[0]
        else:
            return y


def _module_output(graph: onnx.GraphProto, path: str, producers: dict, consumers: dict) -> tuple[str, str]:
    """The one tensor that the nodes of a per-head norm `path` (model.layers.0.self_attn.q_norm) pass on, and
    its layout: "BHSD" when the norm reads the heads transposed (Gemma 3), else "BSHD" (Qwen3)."""
    inside = [n for n in graph.node if module_path(n.name) == path]
    names = {n.name for n in inside}
    leaving = {o for n in inside for o in n.output if any(c.name not in names for c in consumers.get(o, []))}
    if len(leaving) != 1:
        raise EdgetuneError(f"module {path}: expected one output in the with-past export, found {len(leaving)}")
    entering = {x for n in inside for x in n.input if x in producers and producers[x].name not in names}
    transposed = any(producers[x].op_type == "Transpose" for x in entering)
    return leaving.pop(), "BHSD" if transposed else "BSHD"


def _merge_heads(nodes: list, x: str, p: str, layout: str) -> str:
    """(B, S, heads, head_dim) or (B, heads, S, head_dim) -> (B, S, heads·head_dim)."""
    if layout == "BHSD":
        x = add_node(nodes, "Transpose", [x], f"{p}_by_position", perm=[0, 2, 1, 3])
    return add_node(nodes, "Reshape", [x, "/serve/heads/merged"], f"{p}_merged")


def _layer_index(path: str) -> int:
    """`model.layers.3.self_attn` or `transformer.h.3.attn` -> 3."""
    return next(int(part) for part in path.split(".") if part.isdigit())


def _drop_producers(graph: onnx.GraphProto, outputs: set[str]) -> None:
    """Remove the nodes writing `outputs` (dead-node pruning removes what only they read)."""
    keep = [n for n in graph.node if not outputs & set(n.output)]
    del graph.node[:]
    graph.node.extend(keep)
