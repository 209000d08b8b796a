"""`--serve-quant`: the serving graph's frozen float weights as int4 or int8 kernels (the training graph stays fp32).

    int4   every decoder Linear in QLoRA's int4 form, done by `quant.base.quantize_frozen_base`
           before this runs: 4-bit blocks of 32 inputs with a scale and a float minimum
           (GGUF's Q4_1, so Q4_1 weights come back exactly) on MatMulNBits, int8 activations
           inside the kernel (accuracy_level 4: VNNI dot products); here only the LM head
    int8   every decoder Linear with int8 weights per output channel on MatMulIntegerToFloat
           (MLAS's u8·s8 GEMM: AMX or VNNI on x86, dot products on ARM)
    both   the LM head int8 the same way (its rounding goes straight into every logit;
           llama.cpp's GGUF keeps it 8-bit too) and the embedding table int8 per row
Activations are quantized per row (a token), so greedy output in a batch equals the same
request alone (`common/int8_linears.py`). ORT 1.19's DynamicQuantizeMatMul quantizes the whole
activation tensor with one scale, which broke that, and its MatMulNBits has no 8-bit kernel:
int8 first ran there over two 4-bit planes of the weights, whose kernel costs grow with every
row (8 rows took 5× one row's time, a 128-token prompt 2× fp32's). Each input tensor is
quantized once for all its readers (q/k/v, gate/up). Adapter bank MatMuls read graph inputs, never constants, so they
stay float. ORT's own MatMul4BitsQuantizer needs `quantize_matmul_4bits` from the inference
package's native module, which onnxruntime-training-cpu 1.19.2 lacks; quant.formats writes
the same layout in numpy. Measurements: docs/design.md, "Serving graph".
"""

import onnx

from edgetune.builder.graph import initializer_map, lm_head_chain, module_path
from edgetune.builder.rewrites.quant.base import quantize_embedding
from edgetune.builder.weights import WeightFiles
from edgetune.common.int4 import ACCURACY_INT8  # noqa: F401 (re-exported)
from edgetune.common.int4 import Q4_1_BLOCK as INT4_BLOCK  # noqa: F401 (re-exported)
from edgetune.common.int8_linears import RowQuantizer, int8_linear, is_plain_linear, linear_weight
from edgetune.common.names import LOGITS
from edgetune.common.onnx_graph import drop_unused_initializers, is_float_matrix, use_contrib_opset


def quantize_serving_weights(model: onnx.ModelProto, quant: str, files: WeightFiles) -> None:
    """Quantize every Linear over a 2-D float constant (the LM head int8) and the embeddings, in place.

    Each float weight is read from `files` as it is quantized, so one is in memory at a time.

    int4: only the LM head is left (quant.base did the Linears, their block-sum helpers stay float).
    """
    if quant == "none":
        return
    graph = model.graph
    inits = initializer_map(graph)
    head, _ = lm_head_chain(graph, LOGITS)  # before any elementwise tail (Granite's scaling, Gemma 2's capping)
    head_output = head.output[0] if head is not None else LOGITS
    rows = RowQuantizer(model)
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "Gather" and is_float_matrix(inits.get(node.input[0])):
            table = files.values(inits[node.input[0]])  # (V, H)
            before, after = quantize_embedding(graph, node, table, module_path(node.name))
            new_nodes += [*before, node, *after]
            continue
        if not is_plain_linear(node, inits) or (quant == "int4" and node.output[0] != head_output):
            new_nodes.append(node)  # int4's block sums, or not a plain x·W (+ bias): left float
            continue
        int8_linear(graph, new_nodes, node, linear_weight(node, files.values(inits[node.input[1]])), rows)
    del graph.node[:]
    graph.node.extend(new_nodes)
    drop_unused_initializers(graph)
    use_contrib_opset(model)
