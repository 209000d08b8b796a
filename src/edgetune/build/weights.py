"""Store the frozen base weights once: every graph of a bundle points into one file.

The training, eval and inference graphs each carry the same base tensors (the exports
fold them identically). Each tensor is written once to `base_weights.bin`, page-aligned
so ONNX Runtime can map it, and every graph refers to it as external data.
"""

import hashlib
from pathlib import Path

import onnx
from onnx.external_data_helper import set_external_data

from edgetune.common.names import BASE_WEIGHTS

MIN_EXTERNAL_BYTES = 1024
PAGE = 4096              # large tensors start on a page, so ORT can map them
PAGE_ALIGN_BYTES = 1 << 16
SMALL_ALIGN = 64         # small ones (scales, tiny layers) only cache-line aligned, not padded to a page


def share_base_weights(model_paths: list[Path]) -> int:
    """Move initializers of the given models into one shared, deduplicated weights file.

    Returns the number of bytes written.
    """
    folder = model_paths[0].parent
    offsets: dict[bytes, tuple[int, int]] = {}
    with open(folder / BASE_WEIGHTS, "wb") as out:
        for path in model_paths:
            model = onnx.load(path)
            for tensor in model.graph.initializer:
                if len(tensor.raw_data) < MIN_EXTERNAL_BYTES:
                    continue
                data = tensor.raw_data
                key = hashlib.sha256(data).digest()
                if key not in offsets:
                    align = PAGE if len(data) >= PAGE_ALIGN_BYTES else SMALL_ALIGN
                    out.seek((out.tell() + align - 1) // align * align)
                    offsets[key] = (out.tell(), len(data))
                    out.write(data)
                offset, length = offsets[key]
                set_external_data(tensor, BASE_WEIGHTS, offset=offset, length=length)
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
            onnx.save(model, path)
        return out.tell()
