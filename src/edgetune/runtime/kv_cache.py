"""The serving graph's KV cache: one (rows, kv_heads, capacity, head_dim) buffer per layer and K/V.

GroupQueryAttention writes each run's keys and values into these buffers in place: the
runtime binds the same memory as the graph's `past_key_values.N.*` input and its
`present.N.*` output, so nothing is copied between steps. The buffers are numpy arrays
(zeros from calloc: pages are only resident once written), and the OrtValues over row
ranges of them are made once and reused.
"""

import numpy as np
import onnxruntime as ort

from edgetune.common.names import PAST, PREFIX_KEY, PREFIX_LENGTH, PREFIX_QUERY, PREFIX_VALUE, PRESENT


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

    def prefix(self, row: int, length: int, query_width: int) -> dict[str, np.ndarray]:
        """The prefix inputs that continue row `row`'s prompt after its first `length` cached tokens.

        Keys and values come out of the buffers as (1, length, kv_heads·head_dim) copies;
        queries are zeros (GQA needs as many as keys; their outputs are dropped).
        """
        feeds = {PREFIX_QUERY: np.zeros((1, length, query_width), np.float32), PREFIX_LENGTH: np.array([length])}
        for name, buffer in self.buffers.items():
            layer, part = name[len(PAST) :].rsplit(".", 1)
            kv = buffer[row, :, :length].transpose(1, 0, 2).reshape(1, length, -1)  # (1, P, kv_heads·head_dim)
            feeds[f"{PREFIX_KEY if part == 'key' else PREFIX_VALUE}{layer}"] = np.ascontiguousarray(kv)
        return feeds

    def no_prefix(self, rows: int, query_width: int) -> dict[str, np.ndarray]:
        """Empty prefix inputs for `rows` rows (decoding, or a prompt's first chunk)."""
        feeds = {PREFIX_QUERY: np.zeros((rows, 0, query_width), np.float32), PREFIX_LENGTH: np.array([0])}
        for name, buffer in self.buffers.items():
            layer, part = name[len(PAST) :].rsplit(".", 1)
            width = buffer.shape[1] * buffer.shape[3]
            feeds[f"{PREFIX_KEY if part == 'key' else PREFIX_VALUE}{layer}"] = np.zeros((rows, 0, width), np.float32)
        return feeds

    def nbytes_per_token(self) -> int:
        """Bytes one cached token takes over all layers (keys and values)."""
        return sum(b[0, :, 0].nbytes for b in self.buffers.values())
