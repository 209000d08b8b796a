"""One thread owns the decode engine; the HTTP handlers talk to it through an inbox.

Handlers `submit` a `Ticket` (refused at once when every row is busy and the queue is
full), read its events from an asyncio queue, and `cancel` it when the client goes away;
the engine frees the row at its next step. Everything else that touches the engine (loading
and unloading adapters) is a function `call`ed on the engine thread between steps.

Adapters are loaded when a request names them: the registry knows every servable adapter,
the engine holds up to `max_adapters` of them, and the least recently used one that no
request is using makes room. On shutdown, `drain` refuses new requests and, at its
deadline, cancels whatever still runs.
"""

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from edgetune.common.errors import AdapterError, EdgetuneError
from edgetune.runtime.engine import Engine, Event
from edgetune.runtime.sampling import SamplingParams
from edgetune.serve.adapters import AdapterRegistry
from edgetune.serve.errors import queue_full, shutting_down
from edgetune.serve.metrics import ServerMetrics

log = logging.getLogger("edgetune.serve")


@dataclass
class Ticket:
    """One generation request and the queue its events arrive on (read it on the event loop it was made on)."""

    id: str
    prompt: list[int]
    adapter: str | None
    sampling: SamplingParams
    max_new_tokens: int
    stop: tuple[str, ...]
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    events_seen: int = 0  # read by the handler: every event but a cancellation carries a token
    finished: bool = False

    async def next(self) -> Event:
        """The next event; raises the error the engine refused the request with."""
        item = await self.events.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def push(self, item: Event | BaseException) -> None:
        """Hand an event or an error to the request's event loop (from the engine thread)."""
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class Scheduler:
    """Runs `engine.step()` on its own thread while any request is in; see the module docstring."""

    def __init__(
        self, engine: Engine, registry: AdapterRegistry, metrics: ServerMetrics, max_queue: int, max_adapters: int
    ):
        self.engine, self.registry, self.metrics = engine, registry, metrics
        self.limit = engine.max_batch + max_queue  # rows plus queue: requests admitted at a time
        self.max_queue, self.max_adapters = max_queue, max_adapters
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._admitted = 0
        self._tickets: dict[str, Ticket] = {}  # engine thread only: requests in the engine
        self._loaded: OrderedDict[str, None] = OrderedDict()  # engine thread only; least recently used first
        self._deadline: float | None = None
        self._draining = self._stopping = False
        self.failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edgetune-engine", daemon=True)

    # ---- from any thread -----------------------------------------------------------------
    def start(self) -> None:
        """Start the engine thread."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the engine thread runs."""
        return self._thread.is_alive()

    @property
    def admitted(self) -> int:
        """Requests admitted and not yet finished (rows plus queue)."""
        return self._admitted

    def submit(self, ticket: Ticket) -> None:
        """Admit `ticket`, or refuse it at once: 429 when rows and queue are full, 503 while draining."""
        with self._lock:
            if self._draining or not self.alive:
                raise shutting_down()
            if self._admitted >= self.limit:
                self.metrics.rejected.inc()
                raise queue_full(self.max_queue)
            self._admitted += 1
        self.metrics.prompt_tokens.inc(len(ticket.prompt))
        self._send(("add", ticket))

    def cancel(self, request_id: str) -> None:
        """End a request at the next step (the client went away)."""
        self._send(("cancel", request_id))

    def call(self, fn: Callable[[Engine], object]) -> concurrent.futures.Future:
        """Run `fn(engine)` on the engine thread between steps; the future holds its result or error."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._send(("call", fn, future))
        return future

    def load_adapter(self, name: str) -> None:
        """(engine thread) Put a known adapter into a slot, making room if needed."""
        self._ensure_loaded(name)

    def unload_adapter(self, name: str) -> None:
        """(engine thread) Take an adapter out of its slot; AdapterError while a request uses it."""
        if name in self._loaded:
            self.engine.unload_adapter(name)
            del self._loaded[name]
            self.metrics.adapters_loaded.set(len(self._loaded))

    def drain(self, timeout: float) -> None:
        """Refuse new requests; cancel the ones still running after `timeout` seconds."""
        with self._lock:
            self._draining = True
        self._send(("drain", time.monotonic() + timeout))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the engine thread once it has nothing to do (cancelling what runs)."""
        self.drain(0.0)
        self._send(("stop",))
        self._thread.join(timeout)

    def _send(self, item: tuple) -> None:
        self._inbox.put(item)
        self._wake.set()

    # ---- the engine thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                self._read_inbox()
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    for request_id in list(self._tickets):
                        self.engine.cancel(request_id)
                    self._deadline = None
                if self.engine.has_work:
                    self._step()
                elif self._stopping:
                    return
                else:
                    self._wake.wait(0.5)
                    self._wake.clear()
        except BaseException as e:  # a bug: fail every request rather than leave them waiting
            log.exception("the engine thread stopped")
            self.failed = e
            for ticket in self._tickets.values():
                ticket.push(RuntimeError(f"the engine stopped: {e}"))
            raise

    def _read_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            kind = item[0]
            if kind == "add":
                self._add(item[1])
            elif kind == "cancel":
                self.engine.cancel(item[1])
            elif kind == "call":
                _, fn, future = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(self.engine))
                    except BaseException as e:  # handed to the caller
                        future.set_exception(e)
            elif kind == "drain":
                self._deadline = item[1] if self._deadline is None else min(self._deadline, item[1])
            elif kind == "stop":
                self._stopping = True

    def _add(self, ticket: Ticket) -> None:
        try:
            if ticket.adapter is not None:
                self._ensure_loaded(ticket.adapter)
            self.engine.add(
                ticket.id, ticket.prompt, ticket.adapter, ticket.sampling, ticket.max_new_tokens, stop=ticket.stop
            )
        except EdgetuneError as e:
            self._release()
            ticket.push(e)
            return
        self._tickets[ticket.id] = ticket

    def _ensure_loaded(self, name: str) -> None:
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return
        try:
            folder = self.registry.folder(name)
        except KeyError:
            raise AdapterError(f"no adapter named {name!r}") from None
        if len(self._loaded) >= self.max_adapters:
            for old in list(self._loaded):  # least recently used first; a folded adapter stays
                if old == self.engine.folded:
                    continue
                try:
                    self.unload_adapter(old)
                    break
                except AdapterError:  # in use
                    continue
            else:
                held = "running requests" + (" and the folded adapter" if self.engine.folded else "")
                raise AdapterError(f"all {self.max_adapters} adapter slots are held by {held}")
        self.engine.load_adapter(name, folder)
        self._loaded[name] = None
        self.metrics.adapters_loaded.set(len(self._loaded))

    def _step(self) -> None:
        started = time.perf_counter()
        rows = self.engine.active + min(self.engine.waiting, self.engine.free_rows)
        events = self.engine.step()
        now = time.perf_counter()
        m = self.metrics
        m.step_seconds.observe(now - started)
        m.batch_size.observe(rows)
        m.queue_depth.set(self.engine.waiting)
        m.active.set(self.engine.active)
        for event in events:
            ticket = self._tickets.get(event.request_id)
            if ticket is None:
                continue
            if event.token_id is not None:
                m.completion_tokens.inc()
                if ticket.first_token_at is None:
                    ticket.first_token_at = now
                    m.ttft.observe(now - ticket.submitted)
            if event.finished:
                del self._tickets[event.request_id]
                ticket.finished = True
                m.latency.observe(now - ticket.submitted)
                m.finished.labels(event.finish_reason).inc()
                self._release()
            ticket.push(event)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1
