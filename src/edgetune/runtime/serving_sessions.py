"""The serving graph's sessions: the full graph, the lean graph (the base model, or one adapter folded in),
and each row range's IO binding.

    sessions = ServingSessions(serve_onnx, options, manifest["adapted_modules"], lean=True)
    sessions.attach(cache, bank)
    logits = sessions.run(0, rows, ids, positions, seqlens, total, slots)  # (B, 1, V)

A run binds its token ids, positions and lengths; the rows' KV buffers and a logits buffer
stay bound from one run to the next (`KVCache.bind`), so nothing is copied between steps.
A decode run whose rows all compute the lean graph's slot goes to the lean graph
(`lean_graph`; `fold` for a folded adapter), every other run, prompts included, to the
full graph with the adapter bank and the prompt prefix.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgetune.common import names
from edgetune.runtime.adapter_bank import AdapterBank
from edgetune.runtime.fold import fold_sites, fold_tensors
from edgetune.runtime.kv_cache import KVCache
from edgetune.runtime.lean_graph import lean_serving_graph, open_beside
from edgetune.runtime.ort_inference import copy_session_options, open_session


class ServingSessions:
    """The sessions on one bundle's serve.onnx; see the module docstring."""

    def __init__(self, graph: Path, options: ort.SessionOptions, modules: list[str], lean: bool):
        """Open `graph` (serve.onnx) with `options`; with `lean`, also its lean copy for base-model decode runs."""
        self.graph, self.options, self.modules = graph, options, modules
        self.full = open_session(graph, options)
        self.inputs = {i.name: i for i in self.full.get_inputs()}
        self.vocab = self.full.get_outputs()[0].shape[-1]
        self.lean_model = lean_serving_graph(onnx.load(graph, load_external_data=False), modules) if lean else None
        self.lean = self._open_lean(options) if lean else None
        self.lean_slot = 0  # the bank slot the lean graph computes: 0, or a folded adapter's
        self.folded_values: dict[str, ort.OrtValue] = {}  # kept alive as long as the session reading them
        self.cache: KVCache | None = None
        self.bank: AdapterBank | None = None
        self.query_width = self.inputs[names.PREFIX_QUERY].shape[2]
        self._no_prefix: dict[int, dict] = {}
        self._bindings: dict[tuple, tuple[ort.IOBinding, np.ndarray]] = {}

    def attach(self, cache: KVCache, bank: AdapterBank) -> None:
        """The KV cache runs read and write, and the adapter bank the full graph reads."""
        self.cache, self.bank = cache, bank

    def adapter_graph(self, adapter: dict[str, np.ndarray]) -> onnx.ModelProto:
        """The lean graph with the bank branches kept, reading `adapter` (one slot's bank tensors) as constants."""
        return lean_serving_graph(onnx.load(self.graph, load_external_data=False), self.modules, adapter)

    def use_lean(self, slot: int, tensors: dict[str, np.ndarray] | None = None, model=None) -> None:
        """Reopen the lean session, computing bank slot `slot` from now on: on `model` (default: the base
        model's lean graph), with `tensors` in place of its initializers of the same names."""
        self.lean = None  # one lean session's weights in memory at a time
        self._bindings = {key: value for key, value in self._bindings.items() if not key[0]}
        options = copy_session_options(self.options)
        values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in (tensors or {}).items()}
        for name, value in values.items():
            options.add_initializer(name, value)
        self.lean = self._open_lean(options, model)
        self.lean_slot, self.folded_values = slot, values

    def fold(self, slot: int) -> None:
        """Have the lean graph compute bank slot `slot` (0: the base model): its adapter folded into the
        weights (`fold`), or, where they cannot take it in (int4, a QLoRA base), read as constants."""
        if slot == 0:
            self.use_lean(0)
            return
        sites = fold_sites(self.lean_model, self.modules)
        if sites is not None:
            self.use_lean(
                slot, fold_tensors(sites, self.bank.base_weight, lambda module: self.bank.branch(module, slot))
            )
        else:
            self.use_lean(slot, model=self.adapter_graph(self.bank.slot_tensors(slot)))

    def decode_runs(self, row_slots: dict[int, int], slots: np.ndarray) -> list[tuple[int, int]]:
        """The row ranges a decode step of the decoding rows `row_slots` (row -> slot) runs as: all its rows at
        once, or, with an adapter folded, the folded adapter's rows apart from the others (so they always
        compute the folded weights); idle rows join a neighbour's run, their entry in `slots` set to it."""
        top = len(slots)
        if self.lean_slot == 0:
            return [(0, top)]
        folded = {row: slot == self.lean_slot for row, slot in row_slots.items()}
        runs: list[tuple[int, int]] = []
        kind = folded[min(folded)]
        start = 0
        for row in range(top):
            if folded.get(row, kind) != kind:
                runs.append((start, row))
                start, kind = row, folded[row]
            if row not in folded:
                slots[row] = self.lean_slot if kind else 0
        return [*runs, (start, top)]

    def run(self, start, stop, ids, positions, seqlens, total: int, slots, prefix: dict | None = None) -> np.ndarray:
        """One run on rows [start, stop) of the cache; returns logits (B, 1, V).

        Decode runs whose rows all use the lean graph's slot go there, the rest to the full
        graph. Prompts never go to the lean graph: each session's arena keeps its largest
        run's activations, and a decode step's are small.
        """
        feeds = {
            names.INPUT_IDS: ids,
            names.POSITION_IDS: positions,
            names.SEQLENS_K: seqlens,
            names.TOTAL_SEQUENCE_LENGTH: np.array(total, np.int32),
        }
        lean = self.lean is not None and ids.shape[1] == 1 and prefix is None and (slots == self.lean_slot).all()
        binding, logits = self._binding(lean, start, stop)
        if not lean:
            feeds |= (prefix or self._empty_prefix(stop - start)) | {names.ADAPTER_INDEX: slots}
            for name, value in self.bank.values.items():
                binding.bind_ortvalue_input(name, value)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        (self.lean if lean else self.full).run_with_iobinding(binding)
        return logits.copy()

    def _open_lean(self, options: ort.SessionOptions, model: onnx.ModelProto | None = None) -> ort.InferenceSession:
        """A session on `model`, by default the serving graph without the adapter bank and the prompt prefix."""
        model = self.lean_model if model is None else model
        return open_beside(model, self.graph.parent, lambda path: open_session(path, options))

    def _empty_prefix(self, rows: int) -> dict[str, np.ndarray]:
        """The empty prefix inputs of `rows` rows, made once per row count."""
        if rows not in self._no_prefix:
            self._no_prefix[rows] = self.cache.no_prefix(rows, self.query_width)
        return self._no_prefix[rows]

    def _binding(self, lean: bool, start: int, stop: int) -> tuple[ort.IOBinding, np.ndarray]:
        """The IO binding of rows [start, stop) on the lean or full graph, made once: the KV buffers and a
        logits buffer (B, 1, V) stay bound; each run binds its own inputs."""
        key = (lean, start, stop)
        if key not in self._bindings:
            binding = (self.lean if lean else self.full).io_binding()
            logits = np.zeros((stop - start, 1, self.vocab), np.float32)
            binding.bind_ortvalue_output(names.LOGITS, ort.OrtValue.ortvalue_from_numpy(logits))
            self.cache.bind(binding, start, stop)
            self._bindings[key] = binding, logits
        return self._bindings[key]
