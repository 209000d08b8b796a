"""The serving graph's KV cache: one (rows, kv_heads, capacity, head_dim) buffer per layer and K/V.

GroupQueryAttention writes each run's keys and values into these buffers in place: the
runtime binds the same memory as the graph's `past_key_values.N.*` input and its
`present.N.*` output, so nothing is copied between steps. The buffers are numpy arrays
(zeros from calloc: pages are only resident once written), and the OrtValues over row
ranges of them are made once and reused.
"""

import numpy as np
import onnxruntime as ort

from edgetune.common.names import PAST, PRESENT


class KVCache:
    """Per-layer key/value buffers for `rows` sequences of up to `capacity` tokens each."""

    def __init__(self, past_names: list[str], rows: int, kv_heads: int, capacity: int, head_dim: int):
        """`past_names`: the graph's `past_key_values.*` inputs, each bound with its `present.*` output."""
        self.rows, self.capacity = rows, capacity
        self.buffers = {name: np.zeros((rows, kv_heads, capacity, head_dim), np.float32) for name in past_names}
        self._views: dict[tuple[int, int], dict[str, ort.OrtValue]] = {}

    def bind(self, binding: ort.IOBinding, start: int, stop: int) -> None:
        """Bind rows [start, stop) of every buffer as both the past input and the present output."""
        views = self._views.get((start, stop))
        if views is None:
            views = {n: ort.OrtValue.ortvalue_from_numpy(b[start:stop]) for n, b in self.buffers.items()}
            self._views[(start, stop)] = views
        for name, value in views.items():
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(PRESENT + name[len(PAST) :], value)

    def nbytes_per_token(self) -> int:
        """Bytes one cached token takes over all layers (keys and values)."""
        return sum(b[0, :, 0].nbytes for b in self.buffers.values())
