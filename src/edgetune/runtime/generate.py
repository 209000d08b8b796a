"""Text generation with an Optimum-exported with-past decoder graph on ONNX Runtime (CPU).

    g = Generator("bundle/")
    g.generate("Convert to ISO date: 5 March 2021\nISO:", max_new_tokens=12, stop=["\n"])
    for piece in g.stream_chat([{"role": "user", "content": "Hi"}], temperature=0.7, seed=1):
        print(piece, end="")

One prefill run over the prompt, then one run per new token that feeds the KV cache
back. Runs go through `run_with_ort_values`, so the cache stays in ORT-owned OrtValues
between steps (no numpy round trip); the graph's own Concat copies it once per step.
Requests share no state but the session, so threads may decode concurrently; each request
keeps the adapter feeds it started with (one immutable `_AdapterFeeds`, swapped whole).
Graph inputs other than input_ids / attention_mask / position_ids / past_key_values.*
(the LoRA adapter tensors and `lora_scaling`) are fed from `_extra_feeds` on every run.
"""

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import onnxruntime as ort

from edgetune.common import names
from edgetune.common.bundle import open_bundle
from edgetune.common.errors import AdapterError, BundleError, EdgetuneError
from edgetune.common.names import LOGITS, PAST, PRESENT, TOKEN_INPUTS
from edgetune.common.peft import config_scaling, load_adapter, to_graph_layout
from edgetune.common.trust import resolve_trust
from edgetune.runtime.batching import load_tokenizer
from edgetune.runtime.chat_template import render_chat
from edgetune.runtime.model_config import read_model_config
from edgetune.runtime.model_files import utf8_text
from edgetune.runtime.ort_errors import ORT_ERRORS, gist
from edgetune.runtime.ort_inference import input_dtype, open_session
from edgetune.runtime.sampling import Sampler, SamplingParams
from edgetune.runtime.text_stream import TextStream


@dataclass(frozen=True)
class _AdapterFeeds:
    """The graph's extra inputs for one adapter (or none): arrays, and the same as OrtValues."""

    arrays: dict[str, np.ndarray]
    values: dict[str, ort.OrtValue]


class Generator:
    """Greedy or sampled decoding of one sequence at a time with a KV cache.

    Threads may decode concurrently: requests share the session and nothing else, and a
    request keeps the adapter that was set when it started, whatever `set_adapter` does.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        adapter: str | os.PathLike | None = None,
        session_options: ort.SessionOptions | None = None,
        *,
        trust: str | os.PathLike | None = None,
    ):
        """Open `model_dir` (a bundle or a merged folder) with `open_bundle`; `adapter` goes to `set_adapter`.

        trust: a trusted public keys file (else $EDGETUNE_TRUSTED_KEYS); with keys, the
        folder and every adapter must be signed by one of them.
        """
        self._trust = resolve_trust(trust)
        bundle = open_bundle(model_dir, trust=self._trust)
        self.bundle = bundle
        self._bundle_manifest = bundle.manifest if bundle.kind == "bundle" else None
        model_file = bundle.path(names.INFERENCE_MODEL if bundle.kind == "bundle" else names.MERGED_MODEL)
        self.config = read_model_config(bundle.path(names.HF_CONFIG), bundle.optional(names.GENERATION_CONFIG))
        self.tokenizer, self.tokenizer_info = load_tokenizer(bundle.folder)
        if self._bundle_manifest is not None and self._bundle_manifest.get("task", "causal-lm") != "causal-lm":
            task = self._bundle_manifest["task"]
            raise BundleError(f"{bundle.folder}: a {task} bundle does not generate text (use edgetune predict)")
        self.tokenizer.no_truncation()
        self.eos_token_ids = self.config.eos_token_ids | ({self.tokenizer_info.eos_id} - {None})
        self.max_context = self.config.max_context
        self.session = open_session(model_file, session_options)
        self._model_file = model_file
        inputs = {i.name: i for i in self.session.get_inputs()}
        if names.INPUT_IDS not in inputs or LOGITS not in {o.name for o in self.session.get_outputs()}:
            raise BundleError(f"{model_file}: not a decoder graph (no {names.INPUT_IDS} input or {LOGITS} output)")
        self._token_inputs = {n: input_dtype(inputs[n], model_file) for n in TOKEN_INPUTS if n in inputs}
        past_names = [n for n in inputs if n.startswith(PAST)]
        self._empty_past = {
            n: ort.OrtValue.ortvalue_from_numpy(
                np.zeros(self.config.past_shape(inputs[n].shape), input_dtype(inputs[n], model_file))
            )
            for n in past_names
        }
        self._output_names = [LOGITS] + [PRESENT + n[len(PAST) :] for n in past_names]
        self._extra_inputs = {n: i for n, i in inputs.items() if n not in TOKEN_INPUTS and n not in past_names}
        self._set_extra_feeds({})
        if adapter is not None:
            self.set_adapter(adapter)

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
            dtype = input_dtype(spec, names.INFERENCE_MODEL)
            if name not in feeds:
                merged[name] = np.zeros([d if isinstance(d, int) else 1 for d in spec.shape], dtype)
                continue
            value = np.array(feeds[name], dtype, order="C")  # a private C-ordered copy; keeps 0-d scalars
            fixed = [(d, v) for d, v in zip(spec.shape, value.shape) if isinstance(d, int)]
            if value.ndim != len(spec.shape) or any(d != v for d, v in fixed):
                raise AdapterError(f"{name}: shape {list(value.shape)} does not fit the graph's {spec.shape}")
            merged[name] = value
        self._adapter = _AdapterFeeds(merged, {n: ort.OrtValue.ortvalue_from_numpy(v) for n, v in merged.items()})

    @property
    def _extra_feeds(self) -> dict[str, np.ndarray]:
        """The extra inputs new requests get (the current adapter's arrays)."""
        return self._adapter.arrays

    def set_adapter(self, path: str | os.PathLike) -> None:
        """Swap to the PEFT adapter in `path` (None: the base model) without touching the base weights."""
        if path is None:
            self._set_extra_feeds({})
            return
        if self._bundle_manifest is None:
            raise AdapterError(f"{path}: this model takes no adapter (not a bundle: merged already?)")
        if (Path(path) / names.BASE_DELTA).is_file():
            raise AdapterError(f"{path}: carries base-weight deltas (FedEx-LoRA): serve it merged (edgetune merge)")
        weights, config = load_adapter(Path(path), self._bundle_manifest, trust=self._trust)
        feeds = to_graph_layout(weights)
        feeds[names.LORA_SCALING] = np.array(config_scaling(config), np.float32)
        self._set_extra_feeds(feeds)

    # --- decoding ---------------------------------------------------------------------

    def _step(self, ids: np.ndarray, past_len: int, past: dict, adapter: _AdapterFeeds) -> tuple[np.ndarray, dict]:
        """Run the graph on `ids` (1, T) after `past_len` cached tokens -> (last logits (V,), new past)."""
        t = ids.shape[1]
        arrays = {
            "input_ids": ids,
            "attention_mask": np.ones((1, past_len + t)),
            "position_ids": np.arange(past_len, past_len + t)[None],
        }  # (1, T), (1, P+T), (1, T)
        feeds = {n: ort.OrtValue.ortvalue_from_numpy(arrays[n].astype(dt)) for n, dt in self._token_inputs.items()}
        feeds.update(adapter.values)
        feeds.update(past)
        try:
            outputs = self.session.run_with_ort_values(self._output_names, feeds)
        except ORT_ERRORS as e:  # a graph that loads but cannot run (a damaged bundle)
            raise BundleError(f"{self._model_file}: ONNX Runtime cannot run it ({gist(e)})") from None
        logits = outputs[0].numpy()  # (1, T, V)
        new_past = {PAST + n[len(PRESENT) :]: v for n, v in zip(self._output_names[1:], outputs[1:])}
        return logits[0, -1], new_past

    def _tokens(
        self, input_ids: list[int], max_new_tokens: int, sampler: Sampler, adapter: _AdapterFeeds
    ) -> Iterator[int]:
        """Yield new token ids: stops after max_new_tokens, after an EOS id, or when the context is full."""
        ids = np.asarray(input_ids, np.int64)[None]  # (1, T)
        past, past_len = self._empty_past, 0
        for _ in range(max_new_tokens):
            logits, past = self._step(ids, past_len, past, adapter)
            past_len += ids.shape[1]
            token = sampler(logits)
            yield token
            if token in self.eos_token_ids or past_len >= self.max_context:
                return
            ids = np.array([[token]], np.int64)  # (1, 1)

    def _start(self, input_ids: list[int], max_new_tokens: int, truncate: bool, options: dict):
        """Validate a request -> (prompt ids that fit the context, a Sampler, the adapter it keeps)."""
        adapter = self._adapter  # taken once: a later set_adapter does not reach this request
        sampler = Sampler(SamplingParams(**options))
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise EdgetuneError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
        if not input_ids:
            raise EdgetuneError("the prompt is empty (no tokens)")
        if truncate:
            room = self.max_context - max_new_tokens
            if room < 1:
                raise EdgetuneError(
                    f"max_new_tokens {max_new_tokens} leaves no room for the prompt in the model's context of"
                    f" {self.max_context} (truncate needs max_new_tokens < {self.max_context})"
                )
            return list(input_ids[-room:]), sampler, adapter
        if len(input_ids) > self.max_context:
            raise EdgetuneError(
                f"the prompt has {len(input_ids)} tokens, more than the model's context of"
                f" {self.max_context} (pass truncate=True to keep the last tokens)"
            )
        return list(input_ids), sampler, adapter

    def generate_ids(
        self, input_ids: list[int], max_new_tokens: int = 256, *, truncate: bool = False, **options
    ) -> list[int]:
        """New token ids after `input_ids` (an EOS that ended decoding included); options as for `stream`."""
        input_ids, sampler, adapter = self._start(input_ids, max_new_tokens, truncate, options)
        return list(self._tokens(input_ids, max_new_tokens, sampler, adapter))

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a plain prompt, BOS first when the tokenizer adds one (as training does)."""
        info = self.tokenizer_info
        return ([info.bos_id] if info.add_bos else []) + self.tokenizer.encode(
            utf8_text(prompt), add_special_tokens=False
        ).ids

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
        input_ids, sampler, adapter = self._start(input_ids, max_new_tokens, truncate, options)
        return self._pieces(input_ids, self._tokens(input_ids, max_new_tokens, sampler, adapter), tuple(stop))

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
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise EdgetuneError(f"messages[{i}]: must be an object with a string content")
            utf8_text(message["content"], f"messages[{i}].content")
        try:
            return render_chat(info.chat_template, messages, info.bos_token, info.eos_token, add_generation_prompt=True)
        except jinja2.TemplateError as e:
            raise EdgetuneError(f"chat template: {' '.join(str(e).split())}") from e

    def stream_chat(self, messages: list[dict], max_new_tokens: int = 256, **options) -> Iterator[str]:
        """Yield the assistant's reply to `messages` in pieces; options as for `stream`."""
        ids = self.tokenizer.encode(utf8_text(self.chat_prompt(messages)), add_special_tokens=False).ids
        return self.stream_ids(ids, max_new_tokens, **options)

    def chat(self, messages: list[dict], max_new_tokens: int = 256, **options) -> str:
        """The assistant's reply to `messages`; options as for `stream`."""
        return "".join(self.stream_chat(messages, max_new_tokens, **options))
