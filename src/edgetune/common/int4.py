"""int4 weights in blocks (GGUF's Q4_1 form), shared by the builder (QLoRA-int4, int4 serving) and merges.

Linear weights W are (in, out). Asymmetric, in blocks of `block_size` inputs per output:
s = (max - min) / 15, q = round((W - min) / s) in [0, 15], W ≈ q·s + min, so weights loaded
from a Q4_1 GGUF with block 32 come back exactly. q is laid out as ORT's MatMulNBits reads
it: (out·nb, bs) with nb = ⌈in/bs⌉ (a padded last block when bs does not divide in).
"""

import numpy as np

INT4_MAX = 15
Q4_1_BLOCK = 32  # GGUF's Q4_1 block of inputs
ACCURACY_INT8 = 4  # MatMulNBits' accuracy_level: int8 activations per block inside the kernel (VNNI dot products)


def padded_inputs(n_in: int, block_size: int) -> int:
    """The input dimension rounded up to whole blocks (the last block is padded)."""
    return -(-n_in // block_size) * block_size


def quantize_int4(w: np.ndarray, block_size: int) -> dict[str, np.ndarray]:
    """W (in, out) -> {q uint8 in [0, 15] (out·nb, bs), scale (out·nb,), offset (out·nb, 1)}, nb = ⌈in/bs⌉.

    When bs does not divide `in`, the last block of each output is padded with copies of
    its last real weight, so the padding changes neither its min nor its max (nor so the
    real weights' levels); readers drop the padded tail (MatMulNBits never reads it).
    """
    n_in = w.shape[0]
    pad = padded_inputs(n_in, block_size) - n_in
    wt = np.ascontiguousarray(w.T)  # (out, in)
    if pad:
        wt = np.pad(wt, ((0, 0), (0, pad)), mode="edge")  # (out, nb·bs)
    blocks = wt.reshape(-1, block_size)  # (out·nb, bs)
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)  # (out·in/bs,)
    scale = np.where(hi > lo, (hi - lo) / INT4_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint((blocks - lo[:, None]) / scale[:, None]), 0, INT4_MAX).astype(np.uint8)
    return {"q": q, "scale": scale, "offset": lo[:, None].astype(np.float32)}


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """uint8 values in [0, 15] along the last axis (even length) -> two a byte, low nibble first."""
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)
