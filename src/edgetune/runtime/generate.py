"""Text generation with an Optimum-exported with-past decoder graph on ONNX Runtime (CPU).

    g = Generator("bundle/")
    g.generate("Convert to ISO date: 5 March 2021\nISO:", max_new_tokens=12, stop=["\n"])
    for piece in g.stream_chat([{"role": "user", "content": "Hi"}], temperature=0.7, seed=1):
        print(piece, end="")

One prefill run over the prompt, then one run per new token that feeds the KV cache
back. Runs go through `run_with_ort_values`, so the cache stays in ORT-owned OrtValues
between steps (no numpy round trip); the graph's own Concat copies it once per step.
Requests share no state but the session, so threads may decode concurrently.
Graph inputs other than input_ids / attention_mask / position_ids / past_key_values.*
(the LoRA adapter tensors and `lora_scaling`) are fed from `_extra_feeds` on every run.
"""

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import jinja2
import numpy as np
import onnxruntime as ort

from edgetune.common import names
from edgetune.common.errors import AdapterError, BundleError, EdgetuneError
from edgetune.common.manifest import read_manifest
from edgetune.common.names import LOGITS, PAST, PRESENT, TOKEN_INPUTS
from edgetune.common.peft import config_scaling, load_adapter, to_graph_layout
from edgetune.runtime.batching import load_tokenizer
from edgetune.runtime.chat_template import render_chat
from edgetune.runtime.sampling import Sampler, SamplingParams
from edgetune.runtime.text_stream import TextStream

DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def physical_cores() -> int:
    """Physical cores this process may run on (Linux sysfs topology), else the logical CPU count."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text(), (topo / "core_id").read_text()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def default_session_options() -> ort.SessionOptions:
    """One intra-op thread per physical core, no spin-waiting, sequential execution, all graph optimizations.

    Spinning is faster on an idle machine but much slower on a shared one (docs/design.md,
    "Decoding threads"), so the default is not to spin.
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = physical_cores()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def _read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} if the file does not exist."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _ids(value) -> set[int]:
    """An `eos_token_id` field (None, an int or a list) as a set of ids."""
    return set() if value is None else {value} if isinstance(value, int) else set(value)


class Generator:
    """Greedy or sampled decoding of one sequence at a time with a KV cache."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        adapter: str | os.PathLike | None = None,
        session_options: ort.SessionOptions | None = None,
    ):
        """Load `model_dir` (inference.onnx, config.json, tokenizer files); `adapter` goes to `set_adapter`."""
        folder = Path(model_dir)
        model_file = next(
            (folder / n for n in (names.INFERENCE_MODEL, names.MERGED_MODEL) if (folder / n).is_file()), None
        )
        if model_file is None:
            raise BundleError(f"{folder}: no {names.INFERENCE_MODEL} (bundle) or {names.MERGED_MODEL} (merged model)")
        if not (folder / names.HF_CONFIG).is_file():
            raise BundleError(f"{folder}: no {names.HF_CONFIG}")
        manifest = read_manifest(folder) if (folder / names.MANIFEST).is_file() else {}
        self._bundle_manifest = manifest if manifest.get("kind") == "bundle" else None
        if manifest.get("task", "causal-lm") != "causal-lm":
            raise BundleError(f"{folder}: a {manifest['task']} bundle does not generate text (use edgetune predict)")
        config = _read_json(folder / names.HF_CONFIG)
        generation_config = _read_json(folder / names.GENERATION_CONFIG)
        self.tokenizer, self.tokenizer_info = load_tokenizer(folder)
        self.tokenizer.no_truncation()
        self.eos_token_ids = frozenset(
            _ids(config.get("eos_token_id"))
            | _ids(generation_config.get("eos_token_id"))
            | _ids(self.tokenizer_info.eos_id)
        )
        self.max_context = next(
            (config[k] for k in ("max_position_embeddings", "n_positions", "n_ctx") if k in config), None
        )
        if self.max_context is None:
            raise BundleError(f"{folder / names.HF_CONFIG}: no max_position_embeddings (context length)")
        self.session = ort.InferenceSession(
            str(model_file),
            providers=["CPUExecutionProvider"],
            sess_options=session_options or default_session_options(),
        )
        inputs = {i.name: i for i in self.session.get_inputs()}
        self._token_inputs = {n: DTYPES[inputs[n].type] for n in TOKEN_INPUTS if n in inputs}
        past_names = [n for n in inputs if n.startswith(PAST)]
        self._empty_past = {
            n: ort.OrtValue.ortvalue_from_numpy(
                np.zeros(self._past_shape(inputs[n].shape, config), DTYPES[inputs[n].type])
            )
            for n in past_names
        }
        self._output_names = [LOGITS] + [PRESENT + n[len(PAST) :] for n in past_names]
        self._extra_inputs = {n: i for n, i in inputs.items() if n not in TOKEN_INPUTS and n not in past_names}
        self._set_extra_feeds({})
        if adapter is not None:
            self.set_adapter(adapter)

    @staticmethod
    def _past_shape(shape: list, config: dict) -> tuple[int, int, int, int]:
        """(1, kv_heads, 0, head_dim) for an empty past; symbolic graph dims are read from config.json."""
        heads = config.get("num_attention_heads", config.get("n_head"))
        kv_heads = shape[1] if isinstance(shape[1], int) else config.get("num_key_value_heads") or heads
        hidden = config.get("hidden_size", config.get("n_embd"))
        head_dim = shape[3] if isinstance(shape[3], int) else config.get("head_dim") or hidden // heads
        return 1, kv_heads, 0, head_dim

    # --- extra graph inputs (adapter) -------------------------------------------------

    def _set_extra_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        """Feed `feeds` to the graph's extra inputs from now on; those not given get zeros (no adapter).

        Names must be extra inputs of the graph and shapes must match its fixed dims.
        Default zeros: lora_A/lora_B with rank 1 where the rank is symbolic, lora_scaling 0.
        """
        unknown = sorted(set(feeds) - set(self._extra_inputs))
        if unknown:
            raise AdapterError(
                f"{unknown[0]} is not an adapter input of {names.INFERENCE_MODEL} ({len(unknown)} unknown names)"
            )
        merged = {}
        for name, spec in self._extra_inputs.items():
            dtype = DTYPES.get(spec.type)
            if dtype is None:
                raise BundleError(f"{names.INFERENCE_MODEL}: input {name} has unsupported type {spec.type}")
            if name not in feeds:
                merged[name] = np.zeros([d if isinstance(d, int) else 1 for d in spec.shape], dtype)
                continue
            value = np.array(feeds[name], dtype, order="C")  # a private C-ordered copy; keeps 0-d scalars
            fixed = [(d, v) for d, v in zip(spec.shape, value.shape) if isinstance(d, int)]
            if value.ndim != len(spec.shape) or any(d != v for d, v in fixed):
                raise AdapterError(f"{name}: shape {list(value.shape)} does not fit the graph's {spec.shape}")
            merged[name] = value
        self._extra_feeds = merged
        self._extra_values = {n: ort.OrtValue.ortvalue_from_numpy(v) for n, v in merged.items()}

    def set_adapter(self, path: str | os.PathLike) -> None:
        """Swap to the PEFT adapter in `path` (None: the base model) without touching the base weights."""
        if path is None:
            self._set_extra_feeds({})
            return
        if self._bundle_manifest is None:
            raise AdapterError(f"{path}: this model takes no adapter (not a bundle: merged already?)")
        if (Path(path) / names.BASE_DELTA).is_file():
            raise AdapterError(f"{path}: carries base-weight deltas (FedEx-LoRA): serve it merged (edgetune merge)")
        weights, config = load_adapter(Path(path), self._bundle_manifest)
        feeds = to_graph_layout(weights)
        feeds[names.LORA_SCALING] = np.array(config_scaling(config), np.float32)
        self._set_extra_feeds(feeds)

    # --- decoding ---------------------------------------------------------------------

    def _step(self, ids: np.ndarray, past_len: int, past: dict) -> tuple[np.ndarray, dict]:
        """Run the graph on `ids` (1, T) after `past_len` cached tokens -> (last logits (V,), new past)."""
        t = ids.shape[1]
        arrays = {
            "input_ids": ids,
            "attention_mask": np.ones((1, past_len + t)),
            "position_ids": np.arange(past_len, past_len + t)[None],
        }  # (1, T), (1, P+T), (1, T)
        feeds = {n: ort.OrtValue.ortvalue_from_numpy(arrays[n].astype(dt)) for n, dt in self._token_inputs.items()}
        feeds.update(self._extra_values)
        feeds.update(past)
        outputs = self.session.run_with_ort_values(self._output_names, feeds)
        logits = outputs[0].numpy()  # (1, T, V)
        new_past = {PAST + n[len(PRESENT) :]: v for n, v in zip(self._output_names[1:], outputs[1:])}
        return logits[0, -1], new_past

    def _tokens(self, input_ids: list[int], max_new_tokens: int, sampler: Sampler) -> Iterator[int]:
        """Yield new token ids: stops after max_new_tokens, after an EOS id, or when the context is full."""
        ids = np.asarray(input_ids, np.int64)[None]  # (1, T)
        past, past_len = self._empty_past, 0
        for _ in range(max_new_tokens):
            logits, past = self._step(ids, past_len, past)
            past_len += ids.shape[1]
            token = sampler(logits)
            yield token
            if token in self.eos_token_ids or past_len >= self.max_context:
                return
            ids = np.array([[token]], np.int64)  # (1, 1)

    def _start(self, input_ids: list[int], max_new_tokens: int, truncate: bool, options: dict):
        """Validate a request -> (prompt ids that fit the context, a Sampler)."""
        sampler = Sampler(SamplingParams(**options))
        if max_new_tokens < 1:
            raise EdgetuneError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not input_ids:
            raise EdgetuneError("the prompt is empty (no tokens)")
        if truncate:
            return list(input_ids[-max(1, self.max_context - max_new_tokens) :]), sampler
        if len(input_ids) > self.max_context:
            raise EdgetuneError(
                f"the prompt has {len(input_ids)} tokens, more than the model's context of"
                f" {self.max_context} (pass truncate=True to keep the last tokens)"
            )
        return list(input_ids), sampler

    def generate_ids(
        self, input_ids: list[int], max_new_tokens: int = 256, *, truncate: bool = False, **options
    ) -> list[int]:
        """New token ids after `input_ids` (an EOS that ended decoding included); options as for `stream`."""
        input_ids, sampler = self._start(input_ids, max_new_tokens, truncate, options)
        return list(self._tokens(input_ids, max_new_tokens, sampler))

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a plain prompt, BOS first when the tokenizer adds one (as training does)."""
        info = self.tokenizer_info
        return ([info.bos_id] if info.add_bos else []) + self.tokenizer.encode(prompt, add_special_tokens=False).ids

    def stream_ids(
        self,
        input_ids: list[int],
        max_new_tokens: int = 256,
        *,
        stop: Iterable[str] = (),
        truncate: bool = False,
        **options,
    ) -> Iterator[str]:
        """Like `stream`, from token ids."""
        input_ids, sampler = self._start(input_ids, max_new_tokens, truncate, options)
        return self._pieces(input_ids, self._tokens(input_ids, max_new_tokens, sampler), tuple(stop))

    def _pieces(self, input_ids: list[int], tokens: Iterator[int], stop: tuple[str, ...]) -> Iterator[str]:
        """Decode `tokens` into final text pieces, ending at (and without) the first stop string."""
        text = TextStream(self.tokenizer, input_ids, stop)
        for token in tokens:
            if token in self.eos_token_ids:
                break
            piece = text.push(token)
            if piece:
                yield piece
            if text.stopped:
                return
        piece = text.finish()
        if piece:
            yield piece

    def stream(
        self,
        prompt: str,
        max_new_tokens: int = 256,
        *,
        stop: Iterable[str] = (),
        truncate: bool = False,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Yield the continuation of `prompt` in pieces as they become final.

        temperature 0 is greedy; top_k 0 and top_p 1 are off; `seed` makes sampling
        reproducible. Decoding ends at EOS (not in the text), at a stop string (cut
        off, not in the text), after max_new_tokens, or at the end of the context.
        truncate=True keeps the prompt's last (context - max_new_tokens) tokens instead
        of rejecting a prompt longer than the context.
        """
        return self.stream_ids(
            self.encode(prompt),
            max_new_tokens,
            stop=stop,
            truncate=truncate,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )

    def generate(self, prompt: str, max_new_tokens: int = 256, **options) -> str:
        """The continuation of `prompt` as one string; options as for `stream`."""
        return "".join(self.stream(prompt, max_new_tokens, **options))

    # --- chat -------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict]) -> str:
        """`messages` rendered with the model's chat template, ending with the assistant's turn header."""
        info = self.tokenizer_info
        if not info.chat_template:
            raise EdgetuneError("this model has no chat template (tokenizer_config.json or chat_template.jinja)")
        try:
            return render_chat(info.chat_template, messages, info.bos_token, info.eos_token, add_generation_prompt=True)
        except jinja2.TemplateError as e:
            raise EdgetuneError(f"chat template: {' '.join(str(e).split())}") from e

    def stream_chat(self, messages: list[dict], max_new_tokens: int = 256, **options) -> Iterator[str]:
        """Yield the assistant's reply to `messages` in pieces; options as for `stream`."""
        ids = self.tokenizer.encode(self.chat_prompt(messages), add_special_tokens=False).ids
        return self.stream_ids(ids, max_new_tokens, **options)

    def chat(self, messages: list[dict], max_new_tokens: int = 256, **options) -> str:
        """The assistant's reply to `messages`; options as for `stream`."""
        return "".join(self.stream_chat(messages, max_new_tokens, **options))
