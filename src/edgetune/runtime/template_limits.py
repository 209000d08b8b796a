"""Bounds on rendering a chat template, which comes with the bundle: time, output size, recursion.

jinja2's sandbox stops a template from reaching Python's internals, not from running
forever or filling memory. `BoundedEnvironment` adds, per render:
- a time limit, checked on every line a template runs (a trace function on the render's
  thread, template frames only), so loops that print nothing are stopped too;
- a recursion limit on nested template calls (macros, recursive loops);
- an output-size limit on the text produced, and on each string or list an operation
  makes: `*`, `+`, `%`, `**` and method calls are checked before they run where their size
  is known from the arguments (`'a' * 10**10` never allocates), and after otherwise;
  filters likewise.
Each refusal is a `TemplateLimitError` (a jinja2.TemplateError) with one line.
"""

import functools
import re
import sys
import time

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_SECONDS = 2.0
MAX_OUTPUT = 1 << 20  # characters of rendered text, or items/characters of one value
MAX_DEPTH = 64  # nested template frames
MAX_TEMPLATE = 1 << 20  # characters of template source
MAX_EXPONENT = 256
BIG_WIDTH = re.compile(r"\d{7,}")  # a field width of a million or more in a format string


class TemplateLimitError(jinja2.TemplateError):
    """A chat template went past a time, size or recursion bound."""


def _size(value) -> int:
    """Characters of a string, items of a container, digits (in bits / 3) of an int; 0 otherwise."""
    if isinstance(value, (str, bytes, list, tuple, dict, set)):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() // 3
    return 0


def _check_size(value, what: str):
    if _size(value) > MAX_OUTPUT:
        raise TemplateLimitError(f"{what} makes a value larger than {MAX_OUTPUT} characters or items")
    return value


def _check_arguments(args, kwargs, what: str) -> None:
    """Refuse a numeric argument (a width, a count) or a format width past the output limit."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_OUTPUT:
            raise TemplateLimitError(f"{what}: the number {value} is past the template limit of {MAX_OUTPUT}")
        if isinstance(value, str) and ("%" in value or "{" in value) and BIG_WIDTH.search(value):
            raise TemplateLimitError(f"{what}: a format width past the template limit of {MAX_OUTPUT}")


def bounded_filter(name: str, f):
    """`f` as a filter whose arguments and result are checked against the limits."""

    @functools.wraps(f)  # keeps jinja's pass_context / pass_environment marks
    def bounded(*args, **kwargs):
        _check_arguments(args, kwargs, f"filter {name}")
        return _check_size(f(*args, **kwargs), f"filter {name}")

    return bounded


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """transformers' sandbox plus size checks on operators, calls and filters (see the module docstring)."""

    intercepted_binops = frozenset(["*", "**", "%", "+"])

    def __init__(self, **options):
        super().__init__(**options)
        self.filters = {name: bounded_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context, operator, left, right):
        """Check an operator's result size before computing it where it is known, and after."""
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise TemplateLimitError(f"** with an exponent past {MAX_EXPONENT}")
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                expected = (left.bit_length() + right.bit_length()) // 3
            else:
                count = right if isinstance(right, int) else left if isinstance(left, int) else 1
                expected = max(_size(left), _size(right)) * max(count, 0)
            if expected > MAX_OUTPUT:
                raise TemplateLimitError(f"* makes a value larger than {MAX_OUTPUT} characters or items")
        if operator == "+" and _size(left) + _size(right) > MAX_OUTPUT:
            raise TemplateLimitError(f"+ makes a value larger than {MAX_OUTPUT} characters or items")
        if operator == "%":
            _check_arguments((left,), {}, "%")
        return _check_size(super().call_binop(context, operator, left, right), operator)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
        """Check a call's arguments (and a str.format/replace string) before it runs, its result after."""
        what = f"call of {getattr(__obj, '__name__', type(__obj).__name__)}"
        _check_arguments(args, kwargs, what)
        bound = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(bound, "__self__", None)
        if isinstance(owner, str):
            _check_arguments((owner,), {}, what)
            replacing = getattr(bound, "__name__", "") == "replace" and len(args) >= 2
            if replacing and _size(owner) * max(1, _size(args[1])) > MAX_OUTPUT:
                raise TemplateLimitError(f"{what} makes a value larger than {MAX_OUTPUT} characters")
        return _check_size(super().call(__context, __obj, *args, **kwargs), what)


def render_bounded(template: jinja2.Template, context: dict) -> str:
    """Render with the time, recursion and output limits; the limits' errors are TemplateLimitError."""
    deadline = time.monotonic() + MAX_SECONDS

    def on_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise TemplateLimitError(f"rendering took longer than {MAX_SECONDS:g} s")
        return on_line

    def on_call(frame, event, arg):
        if frame.f_code.co_filename != "<template>":
            return None
        depth, f = 0, frame
        while f is not None:
            depth += f.f_code.co_filename == "<template>"
            f = f.f_back
        if depth > MAX_DEPTH:
            raise TemplateLimitError(f"template calls nested deeper than {MAX_DEPTH}")
        return on_line

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        pieces, size = [], 0
        for piece in template.generate(context):
            size += len(piece)
            if size > MAX_OUTPUT:
                raise TemplateLimitError(f"the rendered text is longer than {MAX_OUTPUT} characters")
            pieces.append(piece)
        return "".join(pieces)
    except RecursionError:
        raise TemplateLimitError("template recursion too deep") from None
    except MemoryError:
        raise TemplateLimitError("the template ran out of memory") from None
    finally:
        sys.settrace(previous)
