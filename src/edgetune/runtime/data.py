"""Read training examples from a JSONL or plain-text file, with one-line FILE:LINE errors.

An example is a dict in one of three shapes (extra fields on a line are ignored):
    {"text": str}                          loss on every token
    {"prompt": str, "completion": str}     loss on the completion only
    {"messages": [{"role", "content"}..]}  loss on assistant turns only
Every example also carries `"source": "FILE:LINE"`, so later stages (chat templates,
tokenization) can name the line in their own errors.
"""

import json
import os
from collections.abc import Callable, Iterator

from edgetune.common.errors import DataError

ROLES = ("system", "user", "assistant")


class BadLineError(Exception):
    """A problem with one line; becomes a DataError (FILE:LINE: message) or a skipped line."""


def read_examples(
    path: str | os.PathLike, skip_bad_lines: bool = False, parse: Callable[[dict], dict] | None = None
) -> tuple[list[dict], int]:
    """Read `path` into `(examples, skipped)`; a bad line raises DataError unless skipped.

    `parse` turns one decoded JSON object into an example (or raises `BadLineError`); by
    default the causal-LM shapes below. With a `parse` every file is JSONL.

    `.txt` files (any case) are plain text: paragraphs separated by one or more blank
    lines each become one `{"text": ...}` example (inner newlines kept, surrounding
    whitespace stripped). Any other file is JSONL: one JSON object per line, blank lines
    ignored, a UTF-8 byte-order mark at the start tolerated. With `skip_bad_lines`,
    malformed lines are counted in `skipped` instead of raising; an empty result is still
    an error.
    """
    name = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except OSError as e:
        raise DataError(f"{name}: cannot read ({e.strerror})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    plain = parse is None and name.lower().endswith(".txt")
    if plain:
        records = _paragraphs(raw)
    else:
        records = ((n, line) for n, line in enumerate(raw.split(b"\n"), 1) if line.strip())
    examples, skipped = [], 0
    for lineno, chunk in records:
        try:
            example = {"text": _decode(chunk).strip()} if plain else _parse_line(_decode(chunk), parse)
        except BadLineError as e:
            if not skip_bad_lines:
                raise DataError(f"{name}:{lineno}: {e}") from None
            skipped += 1
            continue
        example["source"] = f"{name}:{lineno}"
        examples.append(example)
    if not examples:
        note = f" ({skipped} bad lines skipped)" if skipped else ""
        raise DataError(f"{name}: no examples{note}")
    return examples, skipped


def _paragraphs(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield `(first_line_number, bytes)` for each blank-line-separated paragraph."""
    start, lines = None, []
    for n, line in enumerate(raw.split(b"\n"), 1):
        if line.strip():
            start = start or n
            lines.append(line.rstrip(b"\r"))
        elif lines:
            yield start, b"\n".join(lines)
            start, lines = None, []
    if lines:
        yield start, b"\n".join(lines)


def _decode(chunk: bytes) -> str:
    """Decode UTF-8 bytes, or report the first bad byte."""
    try:
        return chunk.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadLineError(f"not valid UTF-8 (byte 0x{chunk[e.start]:02x} at column {e.start + 1})") from None


def _parse_line(line: str, parse: Callable[[dict], dict] | None) -> dict:
    """Parse one JSONL line into a normalised example dict; raises on a bad line."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadLineError(f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise BadLineError(f"expected a JSON object, got {json_type(obj)}")
    return (parse or _causal_lm_example)(obj)


def _causal_lm_example(obj: dict) -> dict:
    """A causal-LM example: text, prompt + completion, or messages."""
    shapes = [k for k in ("text", "prompt", "completion", "messages") if k in obj]
    if shapes == ["text"]:
        return {"text": _string(obj, "text", allow_empty=False)}
    if shapes == ["prompt", "completion"]:
        return {
            "prompt": _string(obj, "prompt", allow_empty=True),
            "completion": _string(obj, "completion", allow_empty=False),
        }
    if shapes == ["messages"]:
        return {"messages": _messages(obj["messages"])}
    if shapes == ["prompt"]:
        raise BadLineError('missing field "completion"')
    if shapes == ["completion"]:
        raise BadLineError('missing field "prompt"')
    if not shapes:
        raise BadLineError('unknown shape: expected "text", "prompt"+"completion" or "messages"')
    raise BadLineError(f"ambiguous shape: fields {', '.join(repr(s) for s in shapes)} on one line")


def _string(obj: dict, key: str, allow_empty: bool) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise BadLineError(f'field "{key}" must be a string, got {json_type(value)}')
    if not allow_empty and not value.strip():
        raise BadLineError(f'field "{key}" is empty')
    return value


def _messages(messages: object) -> list[dict]:
    if not isinstance(messages, list):
        raise BadLineError(f'field "messages" must be a list, got {json_type(messages)}')
    if not messages:
        raise BadLineError('field "messages" is empty')
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadLineError(f"messages[{i}] must be an object, got {json_type(m)}")
        for key in ("role", "content"):
            if key not in m:
                raise BadLineError(f'messages[{i}]: missing field "{key}"')
            if not isinstance(m[key], str):
                raise BadLineError(f'messages[{i}]: field "{key}" must be a string, got {json_type(m[key])}')
        if m["role"] not in ROLES:
            raise BadLineError(f'messages[{i}]: unknown role "{m["role"]}" (expected system, user or assistant)')
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise BadLineError("messages has no assistant turn to learn from")
    return out


def json_type(value: object) -> str:
    """JSON's name for a Python value's type, for error messages."""
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)
