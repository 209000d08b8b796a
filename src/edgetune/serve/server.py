"""`edgetune serve`: build the server's parts from a ServeConfig and run them on uvicorn.

SIGTERM (or Ctrl-C) stops accepting connections, lets the requests in flight finish for up
to `drain_timeout` seconds, cancels what is left (their streams end with an error chunk),
and returns; the process then exits 0.
"""

import signal
import socket
import sys
import time
from pathlib import Path

import uvicorn

from edgetune.options import ServeConfig
from edgetune.runtime.engine import Engine
from edgetune.serve.adapters import AdapterRegistry
from edgetune.serve.app import make_app
from edgetune.serve.fine_tuning import FineTuning, default_state_dir
from edgetune.serve.metrics import ServerMetrics
from edgetune.serve.scheduler import Scheduler
from edgetune.serve.state import ServerState
from edgetune.serve.store import Store


def build_state(config: ServeConfig) -> ServerState:
    """Open the bundle's engine, name the base model and register (and load) the command line's adapters."""
    limits = {"max_batch": config.max_batch, "max_adapters": config.max_adapters}
    engine = Engine(config.bundle, **limits, trust=config.trust, spin=config.spin, lean=config.lean)
    state_dir = config.state_dir or default_state_dir()
    adapters_dir = config.adapters_dir or state_dir / "adapters"
    adapters_dir.mkdir(parents=True, exist_ok=True)
    registry = AdapterRegistry(config.model_name or base_model_name(engine.manifest, config.bundle), adapters_dir)
    metrics = ServerMetrics()
    scheduler = Scheduler(engine, registry, metrics, config.max_queue, config.max_adapters)
    for name, folder in config.adapters:  # the engine thread has not started: load here, errors are one line
        registry.check_new_name(name)
        registry.add(name, Path(folder))
        scheduler.load_adapter(name)
    if config.fold is not None:
        scheduler.load_adapter(config.fold)  # again, had a later --adapter taken its slot
        engine.fold_adapter(config.fold)
    base_sha = engine.manifest["source"]["weights_sha256"]
    fine_tuning = FineTuning(
        Store(state_dir),
        config.bundle,
        base_sha,
        registry,
        priority=config.job_nice,
        trust=config.trust,
        sign=config.sign,
    )
    return ServerState(
        fine_tuning=fine_tuning,
        files=engine.files,
        capacity=engine.capacity,
        registry=registry,
        scheduler=scheduler,
        metrics=metrics,
        api_key=config.api_key,
        max_tokens_limit=config.max_tokens_limit,
        max_body_bytes=config.max_body_bytes,
        max_upload_bytes=config.max_upload_bytes,
        started=int(time.time()),
    )


def base_model_name(manifest: dict, bundle: Path) -> str:
    """The base model's name: the source model's file or hub name, without a .gguf suffix."""
    source = str(manifest.get("source", {}).get("model") or Path(bundle).resolve().name)
    name = source.rstrip("/").rsplit("/", 1)[-1]
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


def serve(config: ServeConfig) -> None:
    """Serve until SIGTERM or Ctrl-C, then drain and return."""
    state = build_state(config)
    sock = _bind(config.host, config.port)
    uv_config = uvicorn.Config(
        make_app(state),
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=config.drain_timeout + 5,
    )
    server = _DrainingServer(uv_config, state, config.drain_timeout, sock)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # uvicorn re-raises it when done
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one, printed once the server is up)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        from edgetune.common.errors import EdgetuneError

        raise EdgetuneError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(2048)
    return sock


class _DrainingServer(uvicorn.Server):
    """uvicorn's server that announces its address and drains the scheduler on exit signals."""

    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout: float, sock: socket.socket):
        super().__init__(config)
        self.state, self.drain_timeout, self.sock = state, drain_timeout, sock

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        host, port = self.sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        print(f"edgetune: serving {self.state.registry.base_name} on http://{host}:{port}", flush=True)

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:
            print(
                f"edgetune: {signal.Signals(sig).name}: draining (up to {self.drain_timeout:g} s)",
                file=sys.stderr,
                flush=True,
            )
            self.state.scheduler.drain(self.drain_timeout)
        super().handle_exit(sig, frame)
