"""Render chat messages with a Hugging Face chat template, exactly as transformers does.

transformers' `apply_chat_template(tokenize=False)` compiles the template in a jinja2
`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the
`loopcontrols` extension, a `{% generation %}` tag, a `tojson` filter that does not escape
HTML, and the globals `raise_exception` and `strftime_now`; it renders with
`messages`, `tools=None`, `documents=None`, `add_generation_prompt` and the tokenizer's
special tokens. This module reproduces that without importing transformers, and bounds
every render in time, output size and recursion (`template_limits`): templates come with
the bundle.
"""

import functools
import json
from datetime import datetime
from typing import ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes

from edgetune.runtime.template_limits import (
    MAX_TEMPLATE,
    BoundedEnvironment,
    TemplateLimitError,
    bounded_filter,
    render_bounded,
)


class _GenerationTag(jinja2.ext.Extension):
    """Accept `{% generation %}...{% endgeneration %}` and render its body unchanged."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: object,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=8)
def compile_template(template: str) -> jinja2.Template:
    """Compile a chat template string in transformers' sandboxed jinja2 environment (bounded)."""
    if len(template) > MAX_TEMPLATE:
        raise TemplateLimitError(f"the template is longer than {MAX_TEMPLATE} characters")
    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = bounded_filter("tojson", _tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(
    template: str,
    messages: list[dict],
    bos_token: str | None,
    eos_token: str | None,
    add_generation_prompt: bool = False,
) -> str:
    """Render `messages` to the prompt text; raises jinja2.TemplateError from the template or its bounds.

    A token that is None is left undefined (as transformers leaves an unset special token
    out), so `{{ bos_token }}` renders as "" rather than "None".
    """
    tokens = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v is not None}
    context = dict(messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt)
    return render_bounded(compile_template(template), {**context, **tokens})


def assistant_spans(
    template: str, messages: list[dict], bos_token: str | None, eos_token: str | None
) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` and return `(text, spans)`: `[start, end)` character ranges of
    `text` that the assistant turns produced.

    Rule, for the assistant message i, from renders of conversation prefixes:
        before = render(messages[:i])                              (just "" for i = 0)
        header = render(messages[:i], add_generation_prompt=True) minus `before`
        turn   = render(messages[:i + 1]) minus `before`
    The span starts after the first occurrence of `header` in `turn` (at the turn's start
    if the template has no generation prompt) and ends at the end of `turn` with trailing
    whitespace removed. So it holds the content and the end-of-turn marker the template
    writes after it (e.g. `Hi<|im_end|>`), but not the role header or the newline before
    the next turn. Raises ValueError if the template does not render prefixes of a
    conversation as prefixes of its text (then turns cannot be located this way).
    """
    text = render_chat(template, messages, bos_token, eos_token)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(template, messages[:i], bos_token, eos_token) if i else ""
        prompt = render_chat(template, messages[:i], bos_token, eos_token, add_generation_prompt=True)
        upto = render_chat(template, messages[: i + 1], bos_token, eos_token)
        if not (text.startswith(upto) and upto.startswith(before) and prompt.startswith(before)):
            raise ValueError(f"chat template is not prefix-stable at message {i}: cannot locate the assistant turn")
        header, turn = prompt[len(before) :], upto[len(before) :]
        at = turn.find(header) if header else -1
        start = len(before) + (at + len(header) if at >= 0 else 0)
        end = max(start, len(before) + len(turn.rstrip()))
        spans.append((start, end))
    return text, spans
