"""The decode engine: continuous batching over the serving graph, each row with its own adapter.

    engine = Engine("bundle/", max_batch=8)
    engine.load_adapter("dates", "runs/dates/adapter")
    engine.add("r1", engine.encode("5 March 2021 ->"), adapter="dates", max_new_tokens=16, stop=["\\n"])
    engine.add("r2", engine.encode("Hello"), sampling=SamplingParams(temperature=0.7, seed=1))
    while engine.has_work:
        for event in engine.step():
            print(event.request_id, repr(event.text), event.finish_reason or "")

One thread owns an engine. `step()` admits waiting requests into free rows, prefills up to
`prefill_chunk` prompt tokens (each prompt alone in its row; its last chunk yields its
first token), then runs one decode step for every row that was already decoding: rows
sit at their own positions in the KV cache (`kv_cache`) and read their own adapter from
the bank (`adapter_bank`), so a request joins at the next step and leaves when it
finishes or is cancelled. A row's numbers never depend on the other rows,
so greedy output in a batch equals the same request alone. A decode step whose rows all run
the base model goes to a copy of the graph without the bank and the prompt prefix
(`lean_graph`), which computes the same numbers with fewer ops; one adapter can be folded
into that copy's weights (`fold_adapter`). The sessions and their IO bindings are
`serving_sessions`; a request's state and stop checks, `requests`.
"""

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import onnxruntime as ort

from edgetune.common import names
from edgetune.common.bundle import open_bundle
from edgetune.common.errors import AdapterError, BundleError, EdgetuneError
from edgetune.common.trust import resolve_trust
from edgetune.runtime.adapter_bank import AdapterBank
from edgetune.runtime.kv_cache import KVCache
from edgetune.runtime.model_files import ModelFiles
from edgetune.runtime.ort_inference import default_session_options
from edgetune.runtime.requests import FINISH_CANCELLED, Event, Request
from edgetune.runtime.sampling import Sampler, SamplingParams
from edgetune.runtime.serving_sessions import ServingSessions
from edgetune.runtime.text_stream import TextStream


class Engine:
    """Continuous-batching decoder over a bundle's serve.onnx; see the module docstring."""

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        max_batch: int = 8,
        capacity: int | None = None,
        max_adapters: int = 8,
        prefill_chunk: int = 512,
        session_options: ort.SessionOptions | None = None,
        *,
        trust: str | os.PathLike | None = None,
        lean: bool = True,
        spin: bool = False,
    ):
        """Load the bundle's serving graph; `capacity` tokens per row (default: the context, at most 4096).

        Each step prefills at most `prefill_chunk` prompt tokens (new requests in arrival
        order, a long prompt a chunk per step), so the rows already decoding keep getting
        tokens in between and early requests see their first token sooner. The bundle opens
        through `open_bundle`; trust: a trusted public keys file (else $EDGETUNE_TRUSTED_KEYS),
        with which the bundle and every adapter must be signed by one of its keys. lean: also
        open the base-model graph (`lean_graph`) for steps whose rows all run the base model,
        which are faster there, at the cost of the weights held by a second session. spin: the
        default session options' threads spin-wait between ops (for a device that does nothing else).
        """
        if max_batch < 1:
            raise EdgetuneError(f"max_batch must be >= 1, got {max_batch}")
        trusted = resolve_trust(trust)
        bundle = open_bundle(bundle_dir, trust=trusted)
        folder, manifest = bundle.folder, bundle.manifest
        if bundle.kind != "bundle":
            raise BundleError(f"{folder}: a merged model has no serving graph (serve the bundle with its adapter)")
        if manifest.get("task", "causal-lm") != "causal-lm":
            raise BundleError(f"{folder}: a {manifest['task']} bundle does not generate text (use edgetune predict)")
        graph = bundle.optional(names.SERVE_MODEL)
        if graph is None:
            raise BundleError(f"{folder}: no {names.SERVE_MODEL} (a bundle from an older edgetune: rebuild it)")
        self.files = ModelFiles(bundle)
        self.tokenizer = self.files.tokenizer
        self.manifest = manifest
        options = session_options or default_session_options(spin)
        self.sessions = ServingSessions(graph, options, manifest["adapted_modules"], lean)
        self.folded: str | None = None  # the adapter folded into the lean graph's weights (`fold_adapter`)
        inputs = self.sessions.inputs
        past = [n for n in inputs if n.startswith(names.PAST)]
        kv_heads, head_dim = inputs[past[0]].shape[1], inputs[past[0]].shape[3]
        self.capacity = min(capacity or self.files.max_context, self.files.max_context, 4096)
        self.max_batch, self.prefill_chunk = max_batch, max(1, prefill_chunk)
        self.cache = KVCache(past, max_batch, kv_heads, self.capacity, head_dim)
        fixed = {names.INPUT_IDS, names.POSITION_IDS, names.SEQLENS_K, names.TOTAL_SEQUENCE_LENGTH, names.ADAPTER_INDEX}
        prefix = (names.PREFIX_KEY, names.PREFIX_VALUE, names.PREFIX_QUERY, names.PREFIX_LENGTH)
        bank_inputs = {
            n: i.shape for n, i in inputs.items() if n not in fixed and n not in past and not n.startswith(prefix)
        }
        self.bank = AdapterBank(bank_inputs, manifest, max_adapters, bundle.path(names.INFERENCE_MODEL), trusted)
        self.sessions.attach(self.cache, self.bank)
        self.vocab = self.sessions.vocab
        self._rows: list[Request | None] = [None] * max_batch
        self._waiting: deque[Request] = deque()
        self._prefilling: deque[Request] = deque()  # rows whose prompt is not all cached, in arrival order
        self._ids: dict[str, Request] = {}
        self._cancelled: list[Request] = []

    # --- adapters --------------------------------------------------------------------

    def load_adapter(self, name: str, path: str | os.PathLike) -> None:
        """Load a PEFT adapter under `name` (refused if it was trained for another base model, or is not
        signed by a trusted key when keys are configured)."""
        self.bank.load(name, path)

    def unload_adapter(self, name: str) -> None:
        """Unload `name` (unfolding it first if it is folded); refused while a request uses it."""
        busy = [r.id for r in self._ids.values() if r.adapter == name]
        if busy:
            raise AdapterError(f"adapter {name!r} is in use by {len(busy)} request(s), e.g. {busy[0]}")
        if name == self.folded:
            self.fold_adapter(None)
        self.bank.unload(name)

    def fold_adapter(self, name: str | None) -> float:
        """Fold the loaded adapter `name` into the lean graph's weights (None: the base model again); return the
        seconds the swap took (`fold`).

        That adapter's decode steps then run on the lean graph at the base model's speed (in a
        run of their own when other rows decode beside them), the base model's and other
        adapters' on the full graph; prompts are prefilled on the full graph. With int8
        serving the folded weights are requantized, so the adapter's tokens are a merged
        model's, not always the unmerged branch's. int4 weights and QLoRA bases cannot take
        the adapter in: there the lean graph keeps its branches, reading it as constants
        (the unmerged branch's numbers, without the bank and the prefix). Needs the lean graph.
        """
        if self.sessions.lean is None:
            raise EdgetuneError("folding an adapter needs the lean graph (the engine was opened with lean=False)")
        if name is not None and name not in self.bank.names:
            raise AdapterError(f"no adapter named {name!r} is loaded")
        started = time.perf_counter()
        self.sessions.fold(0 if name is None else self.bank.names[name])
        self.folded = name
        return time.perf_counter() - started

    @property
    def adapters(self) -> list[str]:
        """Names of the loaded adapters."""
        return sorted(self.bank.names)

    # --- requests --------------------------------------------------------------------

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a plain prompt, BOS first when the tokenizer adds one (as training does)."""
        return self.files.encode(prompt)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of `messages` rendered with the chat template, ending with the assistant's header."""
        return self.files.chat_ids(messages)

    def add(
        self,
        request_id: str,
        prompt_ids: list[int],
        adapter: str | None = None,
        sampling: SamplingParams | None = None,
        max_new_tokens: int = 256,
        stop_ids: Iterable[int] = (),
        stop: Iterable[str] = (),
    ) -> None:
        """Queue a request; it joins the batch at the next `step()` with a free row.

        The model's EOS ids always stop; `stop_ids` and `stop` strings add to them (a stop
        string is cut from the text). Refused at once: a duplicate id, an unknown adapter,
        an empty prompt or one that does not fit the cache, max_new_tokens < 1.
        """
        if request_id in self._ids:
            raise EdgetuneError(f"request {request_id!r} is already in the engine")
        if adapter is not None and adapter not in self.bank.names:
            raise AdapterError(f"no adapter named {adapter!r} is loaded")
        if max_new_tokens < 1:
            raise EdgetuneError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise EdgetuneError("the prompt is empty (no tokens)")
        if len(prompt) > self.capacity:
            raise EdgetuneError(f"the prompt has {len(prompt)} tokens, more than the context of {self.capacity}")
        if any(not 0 <= t < self.vocab for t in prompt):
            raise EdgetuneError(f"the prompt has token ids outside the vocabulary (0..{self.vocab - 1})")
        stop = tuple(s for s in stop if s)
        request = Request(
            id=request_id,
            prompt=prompt,
            slot=0 if adapter is None else self.bank.names[adapter],
            adapter=adapter,
            sampler=Sampler(sampling or SamplingParams()),
            max_new_tokens=max_new_tokens,
            stop_ids=frozenset(self.files.eos_token_ids | {int(t) for t in stop_ids}),
            text=TextStream(self.tokenizer, prompt, stop),
        )
        self._ids[request_id] = request
        self._waiting.append(request)

    def cancel(self, request_id: str) -> None:
        """End a request at the next step (its row is freed then); unknown ids are ignored."""
        request = self._ids.get(request_id)
        if request is not None and request not in self._cancelled:
            self._cancelled.append(request)

    @property
    def active(self) -> int:
        """Requests holding a row."""
        return sum(r is not None for r in self._rows)

    @property
    def waiting(self) -> int:
        """Requests queued for a row."""
        return len(self._waiting)

    @property
    def free_rows(self) -> int:
        """Rows a new request could take now."""
        return self.max_batch - self.active

    @property
    def has_work(self) -> bool:
        """True while any request is queued, decoding or about to be cancelled."""
        return bool(self._ids)

    def next_token_logits(self, prompt_ids: list[int], adapter: str | None = None) -> np.ndarray:
        """The logits (V,) after `prompt_ids`, computed in a free row and forgotten (for checks and scoring)."""
        if None not in self._rows:
            raise EdgetuneError("no free row: every row is decoding")
        row = self._rows.index(None)
        slot = 0 if adapter is None else self.bank.names[adapter]
        ids = np.array([prompt_ids], np.int64)  # (1, S)
        positions = np.arange(ids.shape[1], dtype=np.int64)[None]
        seqlens = np.array([ids.shape[1] - 1], np.int32)
        return self._run(row, row + 1, ids, positions, seqlens, ids.shape[1], np.array([slot], np.int64))[0, -1]

    def token_logprobs(self, ids: list[int], adapter: str | None = None) -> np.ndarray:
        """log p(ids[i] | ids[:i]) for i >= 1, decoding `ids` one token at a time in a free row (perplexity)."""
        if None not in self._rows:
            raise EdgetuneError("no free row: every row is decoding")
        if not 2 <= len(ids) <= self.capacity:
            raise EdgetuneError(f"scoring needs 2 to {self.capacity} tokens, got {len(ids)}")
        row = self._rows.index(None)
        slot = np.array([0 if adapter is None else self.bank.names[adapter]], np.int64)
        out = []
        for i in range(len(ids) - 1):
            token, position = np.array([[ids[i]]], np.int64), np.array([[i]], np.int64)  # (1, 1)
            logits = self._run(row, row + 1, token, position, np.array([i], np.int32), i + 1, slot)[0, -1]
            shifted = logits - logits.max()
            out.append(shifted[ids[i + 1]] - np.log(np.exp(shifted).sum()))
        return np.array(out)

    def stream(
        self,
        prompt_ids: list[int],
        adapter: str | None = None,
        sampling: SamplingParams | None = None,
        max_new_tokens: int = 256,
        stop: Iterable[str] = (),
    ) -> Iterator[str]:
        """Yield one request's text as it becomes final (an idle engine: the only request)."""
        if self.has_work:
            raise EdgetuneError("stream needs an idle engine")
        self.add("stream", prompt_ids, adapter=adapter, sampling=sampling, max_new_tokens=max_new_tokens, stop=stop)
        while self.has_work:
            for event in self.step():
                if event.text:
                    yield event.text

    def generate_many(
        self,
        prompts: list[list[int]],
        adapter: str | None = None,
        sampling: SamplingParams | None = None,
        max_new_tokens: int = 256,
        stop: Iterable[str] = (),
    ) -> list[str]:
        """The text generated for each prompt (token ids), decoded in batches of up to max_batch rows."""
        if self.has_work:
            raise EdgetuneError("generate_many needs an idle engine")
        texts = {f"many-{i}": "" for i in range(len(prompts))}
        for rid, prompt in zip(texts, prompts):
            self.add(rid, prompt, adapter=adapter, sampling=sampling, max_new_tokens=max_new_tokens, stop=stop)
        while self.has_work:
            for event in self.step():
                texts[event.request_id] += event.text
        return list(texts.values())

    # --- stepping --------------------------------------------------------------------

    def step(self) -> list[Event]:
        """Cancel, admit and prefill waiting requests, then one decode step for the others; return the events."""
        events = [self._finish(r, None, FINISH_CANCELLED) for r in self._cancelled]
        self._cancelled.clear()
        decoding = [r for r in self._rows if r is not None and r.generated > 0]
        while self._waiting and None in self._rows:
            request = self._waiting.popleft()
            request.row = self._rows.index(None)
            self._rows[request.row] = request
            self._prefilling.append(request)
        budget = self.prefill_chunk  # prompt tokens per step, so decoding rows wait at most one chunk
        while self._prefilling and budget > 0:
            request = self._prefilling[0]
            event = self._prefill(request, budget)
            budget -= request.length - request.prefilled_before
            if self._prefilling and self._prefilling[0] is request and request.length == len(request.prompt):
                self._prefilling.popleft()
            if event is not None:
                events.append(event)
        if decoding:
            events += self._decode(decoding)
        return events

    def _prefill(self, request: Request, budget: int) -> Event | None:
        """Prefill the next chunk of the prompt alone in its row; at the prompt's end, sample its first token.

        The first chunk is a plain prompt (GQA's prompt mode); later chunks feed the row's
        cached keys and values back as the prefix (`KVCache.prefix`).
        """
        start, row = request.length, request.row
        request.prefilled_before = start
        chunk = request.prompt[start : start + min(budget, self.prefill_chunk)]
        end = start + len(chunk)
        prefix = self.cache.prefix(row, start, self.sessions.query_width) if start else None
        logits = self._run(
            row,
            row + 1,
            np.array([chunk], np.int64),  # (1, S)
            np.arange(start, end, dtype=np.int64)[None],  # (1, S)
            np.array([end - 1], np.int32),
            end,
            np.array([request.slot], np.int64),
            prefix,
        )
        request.length = end
        return self._advance(request, logits[0, -1]) if end == len(request.prompt) else None

    def _decode(self, requests: list[Request]) -> list[Event]:
        """One token for each of `requests`, batched over rows 0..highest (free rows in between idle)."""
        top = max(r.row for r in requests) + 1
        ids = np.zeros((top, 1), np.int64)  # (B, 1)
        positions = np.zeros((top, 1), np.int64)  # (B, 1)
        seqlens = np.zeros(top, np.int32)  # (B,): each row's length after this step, minus one
        slots = np.zeros(top, np.int64)
        for r in self._rows[:top]:  # a row admitted in this step sits out, but GQA writes a K/V entry in every
            if r is not None:  # row at its seqlens_k: at its length, the slot its next real token overwrites
                positions[r.row, 0], seqlens[r.row] = r.length, r.length
        for r in requests:
            ids[r.row, 0], positions[r.row, 0], seqlens[r.row], slots[r.row] = r.next_token, r.length, r.length, r.slot
        logits = np.empty((top, 1, self.vocab), np.float32)  # (B, 1, V)
        for a, b in self.sessions.decode_runs({r.row: r.slot for r in requests}, slots):
            total = int(seqlens[a:b].max()) + 1
            logits[a:b] = self._run(a, b, ids[a:b], positions[a:b], seqlens[a:b], total, slots[a:b])
        events = []
        for r in requests:
            r.length += 1
            events.append(self._advance(r, logits[r.row, -1]))
        return events

    def _run(self, start, stop, ids, positions, seqlens, total: int, slots, prefix: dict | None = None) -> np.ndarray:
        """One run of the serving graph on rows [start, stop) of the cache; returns logits (B, 1, V)."""
        return self.sessions.run(start, stop, ids, positions, seqlens, total, slots, prefix)

    def _advance(self, request: Request, logits: np.ndarray) -> Event:
        """Sample the request's next token and turn it into an event (finishing the request if it ends)."""
        token, piece, reason = request.advance(logits, self.capacity)
        return Event(request.id, token, piece) if reason is None else self._finish(request, token, reason, piece)

    def _finish(self, request: Request, token: int | None, reason: str, piece: str = "") -> Event:
        """Free the request's row and id; the event carries the text still held back (none after a stop string)."""
        if request.row >= 0:
            self._rows[request.row] = None
            if request in self._prefilling:
                self._prefilling.remove(request)
        elif request in self._waiting:
            self._waiting.remove(request)
        self._ids.pop(request.id, None)
        if not request.text.stopped and reason != FINISH_CANCELLED:
            piece += request.text.finish()
        return Event(request.id, token, piece, True, reason)
