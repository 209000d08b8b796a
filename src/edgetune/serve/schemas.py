"""OpenAI's request and response shapes for chat and text completions.

`parse_chat` and `parse_completion` check a JSON body field by field and return what the
engine needs; a refused field raises a 400 `ApiError` whose `param` names it. The builders
below make the response objects and the streamed chunks OpenAI's clients expect.
"""

import math
import time
import uuid
from dataclasses import dataclass

from edgetune.runtime.sampling import SamplingParams
from edgetune.serve.errors import bad_request

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS = 4  # as OpenAI


@dataclass(frozen=True)
class Generation:
    """What a completion request asks of the engine, besides its prompt."""

    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None  # None: as many as fit, up to the server's limit
    sampling: SamplingParams
    stop: tuple[str, ...]


def parse_chat(body) -> tuple[list[dict], Generation]:
    """The messages (role, content) and generation settings of a /v1/chat/completions body."""
    body = _object(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty array of {role, content} objects", "messages")
    parsed = [_message(m, f"messages[{i}]") for i, m in enumerate(messages)]
    tokens = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return parsed, _generation(body, tokens)


def parse_completion(body) -> tuple[str | list[int], Generation]:
    """The prompt (text, or token ids) and generation settings of a /v1/completions body."""
    body = _object(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # one prompt given as a batch of one
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        pass
    elif not isinstance(prompt, str) or not prompt:
        raise bad_request("prompt must be a non-empty string (one prompt per request)", "prompt")
    for name in ("echo", "logprobs", "suffix"):
        if body.get(name):
            raise bad_request(f"{name} is not supported by this server", name)
    if body.get("best_of") not in (None, 1):
        raise bad_request("best_of must be 1 on this server", "best_of")
    return prompt, _generation(body, "max_tokens")


def _object(body) -> dict:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad_request("model must be a string naming the base model or an adapter (see GET /v1/models)", "model")
    return body


def _message(message, where: str) -> dict:
    """One chat message as {role, content} with text content."""
    if not isinstance(message, dict):
        raise bad_request(f"{where} must be an object with role and content", where)
    role = message.get("role")
    if role not in ROLES:
        raise bad_request(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text is understood
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request("only text content parts are supported", f"{where}.content[{j}]")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise bad_request(f"{where}.content must be a string", f"{where}.content")
    return {"role": ROLES[role], "content": content}


def _generation(body: dict, tokens_field: str) -> Generation:
    """The settings shared by both endpoints, each checked against OpenAI's ranges."""
    if body.get("n") not in (None, 1):
        raise bad_request("n must be 1 on this server (one choice per request)", "n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad_request("logprobs are not supported by this server", "logprobs")
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    include_usage = bool((options or {}).get("include_usage"))
    max_tokens = body.get(tokens_field)
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise bad_request(f"{tokens_field} must be a whole number >= 1, got {max_tokens!r}", tokens_field)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise bad_request("top_p must be in (0, 1]", "top_p")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise bad_request(f"seed must be a whole number >= 0, got {seed!r}", "seed")
    sampling = SamplingParams(temperature=temperature, top_p=top_p, seed=seed)
    return Generation(body["model"], stream, include_usage, max_tokens, sampling, _stops(body.get("stop")))


def _stops(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOPS:
        raise bad_request(f"stop must be a string or an array of at most {MAX_STOPS} strings", "stop")
    return tuple(s for s in stops if s)


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false, got {value!r}", name)
    return value


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"{name} must be a number, got {value!r}", name)
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low:g} and {high:g}, got {value}", name)
    return float(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---- responses ---------------------------------------------------------------------------


def new_id(kind: str) -> str:
    """A response id in OpenAI's style: chatcmpl-..., cmpl-..."""
    return f"{kind}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """The usage object of a response."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_response(rid: str, model: str, text: str, finish: str, used: dict) -> dict:
    """A whole chat.completion object."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish,
        "logprobs": None,
    }
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": used,
    }


def text_response(rid: str, model: str, text: str, finish: str, used: dict) -> dict:
    """A whole text_completion object."""
    choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": used,
    }


def chat_chunk(rid: str, model: str, delta: dict | None, finish: str | None = None, used: dict | None = None) -> dict:
    """One chat.completion.chunk: a delta, a final chunk with finish_reason, or (delta None) the usage chunk."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    chunk = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if used is not None:
        chunk["usage"] = used
    return chunk


def text_chunk(rid: str, model: str, text: str | None, finish: str | None = None, used: dict | None = None) -> dict:
    """One streamed text_completion object (text None: the usage chunk)."""
    choices = [] if text is None else [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]
    chunk = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": choices}
    if used is not None:
        chunk["usage"] = used
    return chunk
