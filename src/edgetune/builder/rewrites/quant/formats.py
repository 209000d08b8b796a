"""QLoRA's number formats, in numpy: int8 per output channel and int4 in blocks (GGUF's Q4_1 form).

Linear weights W are (in, out), as the graph's MatMul reads them.

- int8: symmetric, per output channel. s = max|W[:, j]| / 127, q = round(W / s) in
  [-127, 127], W ≈ q·s.
- int4: asymmetric, in blocks of `block_size` inputs per output. s = (max - min) / 15,
  q = round((W - min) / s) in [0, 15], W ≈ q·s + min: GGUF's Q4_1 form with a float
  offset, so weights loaded from a Q4_1 GGUF with block 32 come back exactly. q is laid
  out as ORT's MatMulNBits reads it: (out·nb, bs) with nb = ⌈in/bs⌉ (a padded last block
  when bs does not divide in, as MatMulNBits allows), packed two values a byte, low
  nibble first, when stored (`tensors.add_quantized`).
Why these forms, and what the alternatives measured: docs/design.md, "QLoRA".
"""

import numpy as np

from edgetune.common.int4 import padded_inputs, quantize_int4  # noqa: F401 (in common: merges write them too)
from edgetune.common.int8 import quantize_int8  # noqa: F401 (int8's form lives in common: the runtime folds too)


def dequantize(tensors: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The float32 (in, out) weight of `shape` the training graph computes from quantized tensors, in numpy."""
    q, scale = tensors["q"], tensors["scale"]
    if "offset" not in tensors:  # int8
        return q.astype(np.float32) * scale
    blocks = q.reshape(scale.size, -1).astype(np.float32) * scale[:, None] + tensors["offset"]  # (out·nb, bs)
    return blocks.reshape(shape[1], -1)[:, : shape[0]].T  # (in, out), a padded tail dropped
