"""The runtime side of the serving graph's adapter bank: which adapter sits in which slot.

The serving graph reads, per adapted Linear, bank tensors named by PEFT's keys:
A (slots, in, R) holding Aᵀ, B (slots, R, out) holding s·Bᵀ, and for DoRA g (slots, out)
= m / ‖W + s·B·A‖, and each batch row picks its slot through `adapter_index`
(`builder/rewrites/serve/adapter_bank.py`). Slot 0 is no adapter (zeros, g = 1). R is the
largest rank loaded; smaller ranks are zero-padded. Loading writes one slot; the arrays
are reallocated only when a larger rank arrives.
"""

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from edgetune.common.errors import AdapterError
from edgetune.common.names import BASE_DELTA
from edgetune.common.peft import MAGNITUDE, base_output, config_scaling, load_adapter, lora_keys, magnitude_key
from edgetune.runtime.fold import folded_weight


class AdapterBank:
    """Named adapters in slots 1..`max_adapters` of the bank tensors of a serving graph."""

    def __init__(self, inputs: dict[str, list], manifest, max_adapters: int, graph_path: Path, trust=None):
        """`inputs`: bank input name -> its graph shape; `manifest`: the bundle's, to check adapters against;
        `trust`: resolved trusted keys (None: adapters need no signature)."""
        self.manifest, self.slots, self.trust = manifest, max_adapters + 1, trust
        self.shapes = {n: s for n, s in inputs.items()}
        self.dora = any(n.endswith(MAGNITUDE) for n in inputs)
        self.rank = 1
        self.names: dict[str, int] = {}  # adapter name -> slot
        self._graph_path = graph_path
        self._base_weights: dict[str, np.ndarray] | None = None
        self.arrays = {n: self._empty(n, self.rank) for n in inputs}
        self.values = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in self.arrays.items()}

    def _empty(self, name: str, rank: int) -> np.ndarray:
        """A bank tensor with every slot "no adapter": zeros, or ones for DoRA's g."""
        shape = [self.slots if i == 0 else (rank if isinstance(d, str) else d) for i, d in enumerate(self.shapes[name])]
        return np.ones(shape, np.float32) if name.endswith(MAGNITUDE) else np.zeros(shape, np.float32)

    def load(self, name: str, path: str | os.PathLike) -> int:
        """Put the PEFT adapter at `path` into a free slot under `name`; return the slot."""
        if name in self.names:
            raise AdapterError(f"an adapter named {name!r} is loaded already (unload it first)")
        free = [s for s in range(1, self.slots) if s not in self.names.values()]
        if not free:
            raise AdapterError(f"{path}: all {self.slots - 1} adapter slots are in use (unload one first)")
        if (Path(path) / BASE_DELTA).is_file():
            raise AdapterError(f"{path}: carries base-weight deltas (FedEx-LoRA): serve it merged (edgetune merge)")
        weights, config = load_adapter(Path(path), self.manifest, trust=self.trust)
        rank, scale = int(config["r"]), np.float32(config_scaling(config))
        if rank > self.rank:
            self._grow(rank)
        slot = free[0]
        for module in self.manifest["adapted_modules"]:
            key_a, key_b = lora_keys(module)
            a = weights[key_a].T  # (in, r)
            b = scale * weights[key_b].T  # (r, out)
            self.arrays[key_a][slot] = 0
            self.arrays[key_b][slot] = 0
            self.arrays[key_a][slot, :, :rank] = a
            self.arrays[key_b][slot, :rank, :] = b
            if self.dora:
                w = self.base_weight(module)  # (in, out)
                norm = np.linalg.norm(folded_weight(w, a, b), axis=0)  # ‖W + A·B‖ per output (out,)
                self.arrays[magnitude_key(module)][slot] = weights[magnitude_key(module)] / norm
        self.names[name] = slot
        return slot

    def unload(self, name: str) -> None:
        """Free `name`'s slot (its rows must have finished: the caller checks)."""
        slot = self.names.pop(name, None)
        if slot is None:
            raise AdapterError(f"no adapter named {name!r} is loaded")
        for key, array in self.arrays.items():
            array[slot] = 1.0 if key.endswith(MAGNITUDE) else 0.0

    def _grow(self, rank: int) -> None:
        """Reallocate the A/B tensors for a larger rank, keeping every loaded slot."""
        for name in self.arrays:
            if name.endswith(MAGNITUDE):
                continue
            new = self._empty(name, rank)
            old = self.arrays[name]
            new[tuple(slice(0, d) for d in old.shape)] = old
            self.arrays[name] = new
            self.values[name] = ort.OrtValue.ortvalue_from_numpy(new)
        self.rank = rank

    def slot_tensors(self, slot: int) -> dict[str, np.ndarray]:
        """Every bank tensor's entry for `slot`: bank input name -> (in, R), (R, out) or DoRA's (out,)."""
        return {name: array[slot] for name, array in self.arrays.items()}

    def branch(self, module: str, slot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The adapter in `slot` on `module`: A (in, R), B (R, out) with the scale in, and DoRA's g (out,) or None."""
        key_a, key_b = lora_keys(module)
        g = self.arrays[magnitude_key(module)][slot] if self.dora else None
        return self.arrays[key_a][slot], self.arrays[key_b][slot], g

    def base_weight(self, module: str) -> np.ndarray:
        """The float (in, out) weight of an adapted module, read from the inference graph (DoRA's norm, folding)."""
        if self._base_weights is None:
            graph = onnx.load(self._graph_path, load_external_data=False).graph
            weight_of = {n.output[0]: n for n in graph.node if n.op_type in ("MatMul", "Gemm")}
            tensors = {t.name: t for t in graph.initializer}
            self._base_weights = {}
            for m in self.manifest["adapted_modules"]:
                node = weight_of.get(base_output(m))
                if node is None or node.input[1] not in tensors:
                    raise AdapterError(f"{m}: the bundle holds no float base weight (a QLoRA base) for DoRA or folding")
                w = _read_tensor(tensors[node.input[1]], self._graph_path.parent)
                self._base_weights[m] = w.T if any(a.name == "transB" and a.i for a in node.attribute) else w
        return self._base_weights[module]


def _read_tensor(tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
    """A float32 initializer's values, inline or from its external-data file in `folder`."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor).astype(np.float32)
    info = {e.key: e.value for e in tensor.external_data}
    if Path(info["location"]).name != info["location"]:
        raise AdapterError(f"{tensor.name}: external data {info['location']!r} lies outside the bundle folder")
    count = int(np.prod(tensor.dims))
    data = np.fromfile(folder / info["location"], np.float32, count=count, offset=int(info.get("offset", 0)))
    return data.reshape(tuple(tensor.dims))
