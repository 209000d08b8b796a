"""The serving graph (`serve.onnx`): the with-past export rewritten for decoding, next to the training graphs.

    skip norms     each residual Add and the RMSNorm reading it as one SkipSimplifiedLayerNormalization
    attention      RotaryEmbedding + GroupQueryAttention over KV buffers written in place
    base           QLoRA bundles keep their quantized base (the values training saw); --serve-quant
                   int4 stores a float base in QLoRA's int4 form (4-bit blocks of 32, scale and float minimum)
    adapter bank   per-row adapters through `adapter_index`
    head           logits of the last position only; QLoRA's int8 head chunks
    quantize       --serve-quant for float bases: int8, and int4's LM head (rewrites/serve/quantize.py)
    fuse           one MatMulNBits for the Linears reading one input (q/k/v, gate/up)
Its own tensors (rotary tables, quantized weights) go to `serve_weights.bin`; every tensor it
shares with the other graphs stays in `base_weights.bin`, so the training files do not change.
"""

from pathlib import Path

import onnx

from edgetune.builder.export import load_exported
from edgetune.builder.graph import LinearSite, find_linears
from edgetune.builder.rewrites.quant.base import quantize_frozen_base
from edgetune.builder.rewrites.serve.adapter_bank import add_adapter_bank
from edgetune.builder.rewrites.serve.attention import attention_layers, use_group_query_attention
from edgetune.builder.rewrites.serve.attention_config import attention_shape, rotary_tables
from edgetune.builder.rewrites.serve.fuse_linears import fuse_shared_input_linears
from edgetune.builder.rewrites.serve.last_position import head_on_last_position, prune
from edgetune.builder.rewrites.serve.quantize import ACCURACY_INT8, INT4_BLOCK, quantize_serving_weights
from edgetune.builder.rewrites.serve.skip_norm import fuse_skip_norms
from edgetune.builder.weights import MIN_EXTERNAL_BYTES, WeightFiles, WeightStore
from edgetune.common import names


def prepare_serving_graph(path: Path, plan, config, sites_of, serve_quant: str) -> onnx.ModelProto:
    """Rewrite the with-past export at `path` into the serving graph and return it (not yet saved).

    `plan` is the build's AdapterPlan, `config` the HF config, `sites_of(model)` the adapted
    sites, `serve_quant` int4 | int8 | none for a float base (a QLoRA base stays as trained).
    """
    model = load_exported(path)
    fuse_skip_norms(model)  # first: later rewrites add Adds of their own (adapter joins, int4 offsets)
    arch, variant = plan.arch, plan.variant
    linears = find_linears(model.graph, arch)
    layers = attention_layers(linears, model.graph, arch.serve_qkv, arch.serve_out, arch.serve_qk_norms)
    shape = attention_shape(config)
    tables = rotary_tables(config, shape["positions"]) if arch.rotary else None
    use_group_query_attention(model, layers, shape, tables)
    sites: list[LinearSite] = sites_of(model)
    files = WeightFiles(path.parent, None)  # weights read from the export as needed; what is added stays inline
    if variant.quant is not None:  # QLoRA's base as it trained
        quantize_frozen_base(model, variant.quant, variant.block_size, training=False, files=files)
    elif serve_quant == "int4":  # a float base in the same form: GGUF Q4_1 weights come back exactly
        quantize_frozen_base(model, "int4", INT4_BLOCK, training=False, files=files, accuracy_level=ACCURACY_INT8)
    add_adapter_bank(model, sites, variant.use_dora)
    head_on_last_position(model)
    variant.rewrite_head(model, False, files)
    if variant.quant is None and serve_quant != "none":
        quantize_serving_weights(model, serve_quant, files)
    prune(model)
    fuse_shared_input_linears(model)
    return model


def save_serving_graph(model: onnx.ModelProto, folder: Path, shared: dict[str, onnx.TensorProto]) -> None:
    """Save `model` as serve.onnx in `folder`.

    Tensors named in `shared` (the inference graph's, in base_weights.bin) point where those
    do; the serving graph's own go to serve_weights.bin.
    """
    store = WeightStore(folder / names.SERVE_WEIGHTS)
    try:
        for tensor in model.graph.initializer:
            other = shared.get(tensor.name)
            if other is not None and other.data_location == onnx.TensorProto.EXTERNAL:
                tensor.ClearField("raw_data")
                del tensor.external_data[:]
                tensor.external_data.extend(other.external_data)
                tensor.data_location = onnx.TensorProto.EXTERNAL
            elif tensor.data_location == onnx.TensorProto.EXTERNAL:
                store.copy_from(tensor, folder)
            elif len(tensor.raw_data) >= MIN_EXTERNAL_BYTES:
                store.put(tensor, tensor.raw_data)
    finally:
        size = store.close()
    if size == 0:
        (folder / names.SERVE_WEIGHTS).unlink()
    onnx.save(model, folder / names.SERVE_MODEL)
    onnx.checker.check_model(folder / names.SERVE_MODEL)
