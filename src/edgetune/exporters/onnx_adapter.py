"""ONNX Runtime's `.onnx_adapter` file (ORT >= 1.20 multi-LoRA), written and read without ORT.

    ort.LoraAdapter().Load("x.onnx_adapter"); run_options.add_active_adapter(adapter)
    og.Adapters(model).load("x.onnx_adapter", "x")     (onnxruntime-genai)

The file is a flatbuffer of ORT's `onnxruntime/lora/adapter_format/adapter_schema.fbs`
(format version 1, file identifier "TORT"):

    table Parameter { name:string; dims:[int64]; data_type:TensorDataType; raw_data:[uint8] (force_align: 8); }
    table Adapter { format_version:int; adapter_version:int; model_version:int; parameters:[Parameter]; }

Our runtime, onnxruntime-training 1.19.2, predates the format, so it is written here with the
`flatbuffers` package (a dependency of onnxruntime already); docs/design.md says why this
rather than ORT >= 1.20's `AdapterFormat` in another environment. Each parameter is named
after the serving graph input it replaces (PEFT's key) and holds the graph layout: Aᵀ (in, r)
and s·Bᵀ (r, out), the scale folded into B since the file stores no alpha.
"""

import struct
from pathlib import Path

import flatbuffers
import numpy as np
from flatbuffers.table import Table

from edgetune.common.atomic import write_atomic
from edgetune.common.errors import EdgetuneError
from edgetune.common.peft import lora_keys
from edgetune.exporters.source import ExportSource, need_adapter, refuse_deltas, refuse_dora

FORMAT_VERSION = 1
IDENTIFIER = b"TORT"
FLOAT = 1  # TensorDataType.FLOAT
DATA_TYPES = {FLOAT: np.float32}
# vtable slots of the two tables, in schema order
PARAM_NAME, PARAM_DIMS, PARAM_DATA_TYPE, PARAM_RAW_DATA = range(4)
ADAPTER_FORMAT_VERSION, ADAPTER_VERSION, ADAPTER_MODEL_VERSION, ADAPTER_PARAMETERS = range(4)


def adapter_parameters(source: ExportSource) -> dict[str, np.ndarray]:
    """The serving graph's LoRA inputs for this adapter: Aᵀ (in, r) and s·Bᵀ (r, out), float32."""
    params = {}
    for path in source.modules:
        key_a, key_b = lora_keys(path)
        a, b = source.pair(path)  # (r, in), (out, r)
        params[key_a] = np.ascontiguousarray(a.T, np.float32)  # (in, r)
        params[key_b] = np.ascontiguousarray(source.scale * b.T, np.float32)  # (r, out)
    return params


def encode_adapter(params: dict[str, np.ndarray], adapter_version: int = 1, model_version: int = 1) -> bytes:
    """The bytes of an .onnx_adapter file holding `params` (name -> float32 array)."""
    size = sum(v.nbytes for v in params.values()) + 256 * len(params) + 1024
    builder = flatbuffers.Builder(size)
    offsets = []
    for name, value in params.items():
        value = np.ascontiguousarray(value, np.float32)
        name_off = builder.CreateString(name)
        dims_off = builder.CreateNumpyVector(np.asarray(value.shape, np.int64))
        data_off = _byte_vector(builder, value.tobytes(), align=8)
        builder.StartObject(4)
        builder.PrependUOffsetTRelativeSlot(PARAM_RAW_DATA, data_off, 0)
        builder.PrependInt32Slot(PARAM_DATA_TYPE, FLOAT, 0)
        builder.PrependUOffsetTRelativeSlot(PARAM_DIMS, dims_off, 0)
        builder.PrependUOffsetTRelativeSlot(PARAM_NAME, name_off, 0)
        offsets.append(builder.EndObject())
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    params_off = builder.EndVector()
    builder.StartObject(4)
    builder.PrependUOffsetTRelativeSlot(ADAPTER_PARAMETERS, params_off, 0)
    builder.PrependInt32Slot(ADAPTER_MODEL_VERSION, model_version, 0)
    builder.PrependInt32Slot(ADAPTER_VERSION, adapter_version, 0)
    builder.PrependInt32Slot(ADAPTER_FORMAT_VERSION, FORMAT_VERSION, 0)
    builder.Finish(builder.EndObject(), file_identifier=IDENTIFIER)
    return bytes(builder.Output())


def _byte_vector(builder: flatbuffers.Builder, data: bytes, align: int) -> int:
    """A [uint8] vector whose first byte is `align`-aligned in the final buffer (the schema's force_align)."""
    builder.StartVector(1, len(data), align)
    builder.head -= len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
    return builder.EndVector()


def decode_adapter(data: bytes, source: str = "adapter") -> tuple[dict, dict[str, np.ndarray]]:
    """(header {format_version, adapter_version, model_version}, parameters) of .onnx_adapter bytes."""
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        raise EdgetuneError(f"{source}: not an .onnx_adapter file (no 'TORT' identifier)")
    try:
        root = Table(data, flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0))
        header = {
            "format_version": _int(root, ADAPTER_FORMAT_VERSION),
            "adapter_version": _int(root, ADAPTER_VERSION),
            "model_version": _int(root, ADAPTER_MODEL_VERSION),
        }
        params = dict(_parameter(p) for p in _tables(root, ADAPTER_PARAMETERS))
    except (IndexError, ValueError, KeyError, struct.error) as e:
        raise EdgetuneError(f"{source}: a damaged .onnx_adapter file ({e})") from None
    return header, params


def _slot(table: Table, slot: int) -> int:
    """The byte offset of field `slot` in `table`, 0 when it is absent."""
    return table.Offset(4 + 2 * slot)


def _int(table: Table, slot: int) -> int:
    offset = _slot(table, slot)
    return table.Get(flatbuffers.number_types.Int32Flags, table.Pos + offset) if offset else 0


def _tables(table: Table, slot: int) -> list[Table]:
    """The tables of a vector-of-tables field."""
    offset = _slot(table, slot)
    if not offset:
        return []
    start = table.Vector(offset)
    return [Table(table.Bytes, table.Indirect(start + 4 * i)) for i in range(table.VectorLen(offset))]


def _parameter(param: Table) -> tuple[str, np.ndarray]:
    """(name, array) of one Parameter table; the array is a copy of its raw bytes."""
    name = param.String(param.Pos + _slot(param, PARAM_NAME)).decode()
    dims_off, raw_off = _slot(param, PARAM_DIMS), _slot(param, PARAM_RAW_DATA)
    dims = param.GetVectorAsNumpy(flatbuffers.number_types.Int64Flags, dims_off) if dims_off else np.zeros(0)
    dtype = DATA_TYPES.get(_int(param, PARAM_DATA_TYPE))
    if dtype is None:
        raise ValueError(f"parameter {name} has data type {_int(param, PARAM_DATA_TYPE)}, not float")
    raw = param.GetVectorAsNumpy(flatbuffers.number_types.Uint8Flags, raw_off)
    return name, raw.view(dtype).reshape([int(d) for d in dims]).copy()


def write_onnx_adapter(source: ExportSource, out: Path) -> dict:
    """Write the adapter as an .onnx_adapter file at `out`, atomically; return a summary."""
    need_adapter(source, "onnx-adapter")
    refuse_dora(source, ".onnx_adapter", "the serving graph has no magnitude input; fold it with `edgetune merge`")
    refuse_deltas(source, "an .onnx_adapter")
    params = adapter_parameters(source)
    write_atomic(Path(out), encode_adapter(params))
    return {"format": "onnx-adapter", "parameters": len(params), "rank": source.rank, "scale_folded": source.scale}


def describe_onnx_adapter(path: Path) -> dict:
    """What an .onnx_adapter file holds: its header, parameter count, rank and the graph inputs it needs."""
    header, params = decode_adapter(Path(path).read_bytes(), str(path))
    ranks = sorted({v.shape[1] for k, v in params.items() if k.endswith("lora_A.weight") and v.ndim == 2})
    return {
        "file": str(path),
        "format": "onnx-adapter",
        **header,
        "parameters": len(params),
        "rank": ranks[0] if len(ranks) == 1 else ranks,
        "graph_inputs": sorted(params),
        "needs": "a serving graph with these inputs (edgetune export BUNDLE --format genai)",
    }
