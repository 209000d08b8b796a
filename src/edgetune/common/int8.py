"""int8 weights per output channel, shared by the builder (QLoRA-int8, int8 serving) and the runtime (folding).

Linear weights W are (in, out), as the graph's MatMul reads them: s = max|W[:, j]| / 127,
q = round(W / s) in [-127, 127], W ≈ q·s.
"""

import numpy as np

INT8_MAX = 127


def quantize_int8(w: np.ndarray) -> dict[str, np.ndarray]:
    """W (in, out) -> {q int8 (in, out), scale (out,)}: symmetric per output channel."""
    absmax = np.abs(w).max(axis=0)  # (out,)
    scale = np.where(absmax > 0, absmax / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -INT8_MAX, INT8_MAX).astype(np.int8)  # (in, out)
    return {"q": q, "scale": scale}
