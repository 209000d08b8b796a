"""The ASGI app: routes, the API key, body limits, and OpenAI-shaped errors for everything.

/                    the chat page (static/chat.html: no build step)
/health              liveness and load, never behind the key
/metrics             Prometheus text format
/v1/models           the base model and its adapters
/v1/adapters         POST {"name", "path"} loads an adapter from --adapters-dir; DELETE /v1/adapters/NAME
/v1/chat/completions, /v1/completions     (serve/completions.py)
/v1/files, /v1/fine_tuning/jobs           (serve/fine_tuning.py, with --state-dir)
"""

import asyncio
import contextlib
import hmac
import time
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from edgetune.common.errors import AdapterError
from edgetune.serve import completions, files, jobs
from edgetune.serve.errors import ApiError, conflict, not_found, too_large, unauthorized
from edgetune.serve.state import ServerState, read_json

OPEN_PATHS = ("/", "/health")  # everything else needs the key when one is set
UPLOAD_PATHS = ("/v1/files",)


async def chat_page(request: Request) -> HTMLResponse:
    """The chat page."""
    return HTMLResponse(resources.files("edgetune.serve").joinpath("static/chat.html").read_text(encoding="utf-8"))


async def health(request: Request) -> JSONResponse:
    """200 while the engine thread runs, with the load; 503 once it stopped."""
    state: ServerState = request.app.state.server
    alive = state.scheduler.alive
    body = {
        "status": "ok" if alive else "engine stopped",
        "requests": state.scheduler.admitted,
        "limit": state.scheduler.limit,
        "model": state.registry.base_name,
    }
    return JSONResponse(body, status_code=200 if alive else 503)


async def metrics(request: Request) -> Response:
    """Prometheus' text exposition."""
    state: ServerState = request.app.state.server
    return Response(state.metrics.exposition(), media_type=state.metrics.content_type)


async def models(request: Request) -> JSONResponse:
    """GET /v1/models."""
    state: ServerState = request.app.state.server
    return JSONResponse({"object": "list", "data": state.registry.models(state.started)})


async def load_adapter(request: Request) -> JSONResponse:
    """POST /v1/adapters {"name", "path"}: load an adapter folder from inside --adapters-dir."""
    state: ServerState = request.app.state.server
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be {"name": ..., "path": ...}')
    folder = state.registry.confine(body.get("path"))
    name = state.registry.check_new_name(body.get("name"))
    await add_adapter(state, name, folder)
    return JSONResponse(
        {
            "id": name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "edgetune",
            "parent": state.registry.base_name,
        }
    )


async def add_adapter(state: ServerState, name: str, folder) -> None:
    """Register and load an adapter now, so that a bad one is refused at once (400 naming `path`)."""
    state.registry.add(name, folder)
    try:
        await asyncio.wrap_future(state.scheduler.call(lambda engine: state.scheduler.load_adapter(name)))
    except AdapterError as e:
        state.registry.remove(name)
        raise ApiError(400, str(e).replace(str(folder), body_path(state, folder)), "path", "invalid_adapter") from None


def body_path(state: ServerState, folder) -> str:
    """A folder as the client named it: relative to --adapters-dir (never the server's absolute paths)."""
    root = state.registry.adapters_dir
    return str(folder.relative_to(root)) if root and folder.is_relative_to(root) else folder.name


async def unload_adapter(request: Request) -> JSONResponse:
    """DELETE /v1/adapters/NAME: unload it (409 while a request uses it)."""
    state: ServerState = request.app.state.server
    name = request.path_params["name"]
    if name not in state.registry.names():
        raise not_found(f"no adapter named {name!r}", "name", "adapter_not_found")
    try:
        await asyncio.wrap_future(state.scheduler.call(lambda engine: state.scheduler.unload_adapter(name)))
    except AdapterError as e:
        raise conflict(str(e), "name", "adapter_in_use") from None
    state.registry.remove(name)
    return JSONResponse({"id": name, "object": "model", "deleted": True})


class Guard:
    """ASGI middleware: the API key (401) and the body size (413, from Content-Length or while reading)."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, headers = scope["path"], dict(scope["headers"])
        if self.state.api_key and path not in OPEN_PATHS and not self._authorized(headers):
            return await unauthorized().response()(scope, receive, send)
        limit = self.state.max_upload_bytes if path in UPLOAD_PATHS else self.state.max_body_bytes
        length = headers.get(b"content-length", b"0")
        if not length.isdigit():
            return await ApiError(400, "Content-Length must be a number").response()(scope, receive, send)
        if int(length) > limit:
            return await too_large(limit).response()(scope, receive, send)
        received = 0

        async def bounded_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large(limit)
            return message

        await self.app(scope, bounded_receive, send)

    def _authorized(self, headers: dict) -> bool:
        value = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, key = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self.state.api_key.encode())


async def api_error(request: Request, error: ApiError) -> Response:
    """Every ApiError as OpenAI's error body."""
    return error.response()


async def client_gone(request: Request, error: Exception) -> Response:
    """The client left before its answer: nobody reads this."""
    return Response(status_code=499)


def make_app(state: ServerState) -> Starlette:
    """The app over a server's parts; the scheduler starts and stops with it."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.scheduler.start()
        if state.fine_tuning:
            await asyncio.to_thread(state.fine_tuning.start)
        yield
        if state.fine_tuning:
            await asyncio.to_thread(state.fine_tuning.stop)
        state.scheduler.stop()

    routes = [
        Route("/", chat_page),
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/v1/models", models),
        Route("/v1/adapters", load_adapter, methods=["POST"]),
        Route("/v1/adapters/{name:path}", unload_adapter, methods=["DELETE"]),
        Route("/v1/chat/completions", completions.chat_completions, methods=["POST"]),
        Route("/v1/completions", completions.completions, methods=["POST"]),
        *((files.ROUTES + jobs.ROUTES) if state.fine_tuning else []),
    ]
    handlers = {ApiError: api_error, completions.ClientGoneError: client_gone, 404: _not_found, 405: _not_allowed}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.server = state
    app.add_middleware(_Counter)
    return Guard(app, state)


async def _not_found(request: Request, exc) -> Response:
    return ApiError(404, f"no route {request.method} {request.url.path}", None, "unknown_url").response()


async def _not_allowed(request: Request, exc) -> Response:
    return ApiError(
        405, f"{request.method} is not allowed on {request.url.path}", None, "method_not_allowed"
    ).response()


class _Counter:
    """Counts the requests answered, by route and status."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                route = scope.get("route")
                metrics = scope["app"].state.server.metrics
                metrics.requests.labels(getattr(route, "path", "other"), str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
