"""Base weights on disk, never in a ModelProto: a build handles graphs as structure only.

The export streams every weight into a staging `WeightStore` and the graphs refer to it
as ONNX external data, so no graph proto nears protobuf's 2 GB limit and no step holds
a second copy of the model. At the end `share_base_weights` copies the tensors the
bundle's graphs still use into `base_weights.bin`, once each (deduplicated by content,
page-aligned so ONNX Runtime can map them), and saves every graph pointing into it.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from edgetune.common.names import BASE_WEIGHTS

MIN_EXTERNAL_BYTES = 1024
PAGE = 4096  # large tensors start on a page, so ORT can map them
PAGE_ALIGN_BYTES = 1 << 16
SMALL_ALIGN = 64  # small ones (scales, tiny layers) only cache-line aligned, not padded to a page
CHUNK = 1 << 24  # copies between files go through buffers of this size
STAGING_WEIGHTS = "staging_weights.bin"  # the build's working store, removed before the bundle is done


class WeightStore:
    """An append-only file of tensors, deduplicated by content, that graphs point into."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = open(self.path, "w+b")  # noqa: SIM115 (the store owns it until close())
        self._end = 0
        self._index: dict[bytes, tuple[int, int]] = {}  # sha256 -> (offset, length)
        self._copied: dict[tuple, tuple[int, int]] = {}  # (source file, offset, length) -> (offset, length)

    def put(self, tensor: onnx.TensorProto, data) -> None:
        """Store `data` (a bytes-like object) once and make `tensor` refer to it."""
        view = memoryview(data).cast("B")
        key = hashlib.sha256(view).digest()
        if key not in self._index:
            self._index[key] = self._append(len(view), [view])
        _point_at(tensor, self.path.name, *self._index[key])

    def copy_from(self, tensor: onnx.TensorProto, base_dir: Path) -> None:
        """Store the external data of `tensor` (relative to `base_dir`) once and point `tensor` here."""
        location, offset, length = external_region(tensor)
        source = (Path(base_dir) / location, offset, length)
        if source not in self._copied:  # the graphs of a bundle share their regions: hash each once
            with open(source[0], "rb") as src:
                digest = hashlib.sha256()
                for chunk in _chunks(src, offset, length):
                    digest.update(chunk)
                key = digest.digest()
                if key not in self._index:
                    self._index[key] = self._append(length, _chunks(src, offset, length))
            self._copied[source] = self._index[key]
        _point_at(tensor, self.path.name, *self._copied[source])

    def externalize(self, model: onnx.ModelProto, keep: set[str] = frozenset()) -> None:
        """Move every inline initializer of at least MIN_EXTERNAL_BYTES, except those in `keep`, into the store."""
        for tensor in model.graph.initializer:
            if (
                tensor.name not in keep
                and tensor.data_location != onnx.TensorProto.EXTERNAL
                and len(tensor.raw_data) >= MIN_EXTERNAL_BYTES
            ):
                self.put(tensor, tensor.raw_data)

    def close(self) -> int:
        """Close the file; return its size in bytes."""
        self._file.close()
        return self._end

    def _append(self, length: int, chunks) -> tuple[int, int]:
        """Write `length` bytes given as `chunks` at the next aligned offset; return (offset, length)."""
        align = PAGE if length >= PAGE_ALIGN_BYTES else SMALL_ALIGN
        offset = -(-self._end // align) * align
        self._file.seek(offset)
        for chunk in chunks:
            self._file.write(chunk)
        self._file.flush()  # graphs saved next to the store are checked and read by path
        self._end = offset + length
        return offset, length


@dataclass(frozen=True)
class WeightFiles:
    """A graph's weights while a rewrite reads and adds them: one tensor in memory at a time.

    External initializers are read from `base_dir` when a rewrite asks for them; the
    tensors it adds go to `store` at once when large (inline when small, as
    `WeightStore.externalize` would leave them), so the graph proto never holds weights.
    """

    base_dir: Path
    store: WeightStore | None  # None: added tensors stay inline (a graph whose weights are stored later)

    def raw(self, tensor: onnx.TensorProto) -> bytes:
        """The bytes of an initializer, inline or external."""
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            return tensor.raw_data
        location, offset, length = external_region(tensor)
        with open(Path(self.base_dir) / location, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def values(self, tensor: onnx.TensorProto) -> np.ndarray:
        """An initializer's values (read-only when read from raw bytes)."""
        if tensor.data_location != onnx.TensorProto.EXTERNAL and not tensor.raw_data:
            return onnx.numpy_helper.to_array(tensor)  # typed fields of a small constant
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        return np.frombuffer(self.raw(tensor), dtype).reshape(tuple(tensor.dims))

    def add(self, graph: onnx.GraphProto, tensor: onnx.TensorProto) -> str:
        """Append initializer `tensor` (raw data) to `graph`, its bytes in the store when large; return its name."""
        if self.store is not None and len(tensor.raw_data) >= MIN_EXTERNAL_BYTES:
            self.store.put(tensor, tensor.raw_data)
        graph.initializer.append(tensor)
        return tensor.name

    def replace(self, tensor: onnx.TensorProto, array: np.ndarray) -> None:
        """Give initializer `tensor` the values `array` in place, its bytes in the store when large."""
        tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
        if self.store is not None and len(tensor.raw_data) >= MIN_EXTERNAL_BYTES:
            self.store.put(tensor, tensor.raw_data)

    def add_array(self, graph: onnx.GraphProto, name: str, array: np.ndarray) -> str:
        """Append `array` as initializer `name` (see `add`); return the name."""
        return self.add(graph, onnx.numpy_helper.from_array(array, name))


def share_base_weights(
    models: dict[Path, onnx.ModelProto], base_dir: Path, slices: dict[str, tuple[str, int]] | None = None
) -> int:
    """Copy every large initializer of `models` into `base_weights.bin` and save each model at its path.

    External data is read relative to `base_dir`; all paths must lie in one folder, where
    `base_weights.bin` is written. `slices` maps a tensor name to (whole tensor name, byte
    offset) when its bytes are that part of the whole (a tied LM head's chunks of the
    embedding table): it then points into the whole's bytes. Returns the number of bytes written.
    """
    slices = slices or {}
    folder = next(iter(models)).parent
    store = WeightStore(folder / BASE_WEIGHTS)
    try:
        for path, model in models.items():
            for tensor in model.graph.initializer:
                if tensor.name in slices:
                    continue
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    store.copy_from(tensor, base_dir)
                elif len(tensor.raw_data) >= MIN_EXTERNAL_BYTES:
                    store.put(tensor, tensor.raw_data)
            by_name = {t.name: t for t in model.graph.initializer}
            for name, (whole, offset) in slices.items():
                if name in by_name:  # after its whole, which now lies in base_weights.bin
                    _, whole_offset, _ = external_region(by_name[whole])
                    _point_at(by_name[name], BASE_WEIGHTS, whole_offset + offset, _byte_length(by_name[name]))
            onnx.save(model, path)
    finally:
        size = store.close()
    return size


def load_weights(model: onnx.ModelProto, names: set[str], base_dir: Path) -> None:
    """Bring the data of the named external initializers into the graph (an encoder head's, trained whole)."""
    for tensor in model.graph.initializer:
        if tensor.name in names and tensor.data_location == onnx.TensorProto.EXTERNAL:
            location, offset, length = external_region(tensor)
            with open(Path(base_dir) / location, "rb") as f:
                f.seek(offset)
                data = f.read(length)
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = data


def external_region(tensor: onnx.TensorProto) -> tuple[str, int, int]:
    """(location, offset, length) of an external tensor."""
    info = {e.key: e.value for e in tensor.external_data}
    return info["location"], int(info.get("offset", 0)), int(info["length"])


def _byte_length(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, external or inline raw."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return external_region(tensor)[2]
    return len(tensor.raw_data)


def _point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _chunks(f, offset: int, length: int):
    """Read `length` bytes from `offset` in pieces of at most CHUNK."""
    f.seek(offset)
    while length > 0:
        chunk = f.read(min(CHUNK, length))
        if not chunk:
            raise EOFError(f"{f.name}: {length} bytes missing at the end of a tensor")
        length -= len(chunk)
        yield chunk
