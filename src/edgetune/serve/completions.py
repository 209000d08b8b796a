"""POST /v1/chat/completions and /v1/completions: tokenize, admit, then answer whole or as SSE.

A request is refused before it takes a place in the queue when it cannot succeed: an
unknown model (404), a prompt longer than the context or a prompt plus `max_tokens` past
it (400 context_length_exceeded), `max_tokens` over the server's limit (400). A client that
goes away, mid-stream or while waiting for a whole answer, has its request cancelled: the
engine frees its row at the next step.
"""

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from edgetune.common.errors import AdapterError, EdgetuneError
from edgetune.serve import schemas
from edgetune.serve.errors import ApiError, bad_request, shutting_down
from edgetune.serve.scheduler import Ticket
from edgetune.serve.state import ServerState, read_json

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def chat_completions(request: Request):
    """OpenAI's chat completions over the bundle's chat template."""
    state: ServerState = request.app.state.server
    messages, gen = schemas.parse_chat(await read_json(request))
    adapter = state.registry.resolve(gen.model)
    try:
        ids = await run_in_threadpool(state.files.chat_ids, messages)
    except EdgetuneError as e:
        raise bad_request(str(e), "messages") from None
    return await _answer(request, state, "chat", ids, adapter, gen, "messages")


async def completions(request: Request):
    """OpenAI's (legacy) text completions on a plain prompt."""
    state: ServerState = request.app.state.server
    prompt, gen = schemas.parse_completion(await read_json(request))
    adapter = state.registry.resolve(gen.model)
    ids = prompt if isinstance(prompt, list) else await run_in_threadpool(state.files.encode, prompt)
    return await _answer(request, state, "text", ids, adapter, gen, "prompt")


async def _answer(request: Request, state: ServerState, kind: str, ids: list[int], adapter, gen, field: str):
    """Admit the request, then stream it or wait for its whole text."""
    max_new = _max_new_tokens(state, len(ids), gen, field)
    ticket = Ticket(
        schemas.new_id("chatcmpl" if kind == "chat" else "cmpl"), ids, adapter, gen.sampling, max_new, gen.stop
    )
    state.scheduler.submit(ticket)
    disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        first = await _next_or_disconnect(ticket, disconnected)
    except BaseException:
        disconnected.cancel()
        if not ticket.finished:
            state.scheduler.cancel(ticket.id)
        raise
    if gen.stream:
        disconnected.cancel()  # StreamingResponse watches the connection itself
        return StreamingResponse(
            _sse(state, ticket, first, kind, gen), media_type="text/event-stream", headers=SSE_HEADERS
        )
    try:
        text, event = first.text, first
        while not event.finished:
            event = await _next_or_disconnect(ticket, disconnected)
            text += event.text
    finally:
        disconnected.cancel()
        if not ticket.finished:
            state.scheduler.cancel(ticket.id)
    if event.finish_reason == "cancelled":  # the server is shutting down
        raise shutting_down()
    used = schemas.usage(len(ids), _completion_tokens(ticket, event))
    build = schemas.chat_response if kind == "chat" else schemas.text_response
    return JSONResponse(build(ticket.id, gen.model, text, event.finish_reason, used))


def _max_new_tokens(state: ServerState, prompt_tokens: int, gen, field: str) -> int:
    """How many tokens to generate: max_tokens, or all that fit; refused past the context or the server's limit."""
    context, limit = state.capacity, state.max_tokens_limit
    if gen.max_tokens is not None and gen.max_tokens > limit:
        raise bad_request(f"max_tokens is {gen.max_tokens}, more than this server's limit of {limit}", "max_tokens")
    asked = gen.max_tokens or 1
    if prompt_tokens + asked > context:
        raise bad_request(
            f"this model's maximum context length is {context} tokens; the request has {prompt_tokens} tokens in "
            f"its {field} and asks for {asked} more",
            field,
            "context_length_exceeded",
        )
    return gen.max_tokens or min(limit, context - prompt_tokens)


def _completion_tokens(ticket: Ticket, last) -> int:
    """Tokens generated: every event carried one, except a cancellation."""
    return ticket.events_seen - (last.token_id is None)


async def _next_or_disconnect(ticket: Ticket, disconnected: asyncio.Future):
    """The ticket's next event, counted; raises if the client went away first or the engine refused it."""
    getter = asyncio.ensure_future(ticket.next())
    done, _ = await asyncio.wait({getter, disconnected}, return_when=asyncio.FIRST_COMPLETED)
    if getter not in done:
        getter.cancel()
        raise ClientGoneError()
    try:
        event = getter.result()
    except AdapterError as e:
        raise ApiError(409, str(e), "model", "adapter_unavailable") from None
    except EdgetuneError as e:
        raise bad_request(str(e)) from None
    ticket.events_seen += 1
    return event


async def _wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body was read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class ClientGoneError(Exception):
    """The client closed the connection before its answer was ready."""


async def _sse(state: ServerState, ticket: Ticket, first, kind: str, gen) -> AsyncIterator[str]:
    """The stream: a role chunk (chat), a chunk per text piece, the finish chunk, usage if asked, [DONE]."""
    model, chat = gen.model, kind == "chat"
    event = first
    try:
        if chat:
            yield _data(schemas.chat_chunk(ticket.id, model, {"role": "assistant", "content": ""}))
        while True:
            if event.text:
                piece = {"content": event.text} if chat else event.text
                yield _data((schemas.chat_chunk if chat else schemas.text_chunk)(ticket.id, model, piece))
            if event.finished:
                break
            event = await _next_or_disconnect(ticket, asyncio.get_running_loop().create_future())
        if event.finish_reason == "cancelled":  # the server is shutting down
            yield _data(
                {
                    "error": {
                        "message": "the server shut down before this answer was complete",
                        "type": "server_error",
                        "param": None,
                        "code": "shutting_down",
                    }
                }
            )
            return
        finish = {} if chat else ""
        yield _data((schemas.chat_chunk if chat else schemas.text_chunk)(ticket.id, model, finish, event.finish_reason))
        if gen.include_usage:
            used = schemas.usage(len(ticket.prompt), _completion_tokens(ticket, event))
            yield _data((schemas.chat_chunk if chat else schemas.text_chunk)(ticket.id, model, None, used=used))
        yield "data: [DONE]\n\n"
    finally:
        if not ticket.finished:  # the client went away (this generator was cancelled or closed)
            state.scheduler.cancel(ticket.id)


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
