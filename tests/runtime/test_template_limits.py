"""Chat templates come with the bundle: runaway ones stop with one line, in time and memory."""

import dataclasses
import json
import time

import pytest

from edgetune.common.errors import DataError, EdgetuneError
from edgetune.runtime.batching import encode_example, load_tokenizer
from edgetune.runtime.chat_template import render_chat
from edgetune.runtime.generate import Generator
from edgetune.runtime.template_limits import MAX_SECONDS, TemplateLimitError
from tests.tamper import copy_bundle, reseal

MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
HOSTILE = {
    "nested loops printing": "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxx{% endfor %}{% endfor %}",
    "nested loops silent": "{% set r = range(100000)|list %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}",
    "string repeat": "{{ 'a' * 10**12 }}",
    "list repeat": "{{ ([1] * 100000) * 100000 }}",
    "macro recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "recursive loop": "{% for m in [1] recursive %}{{ loop([1]) }}{% endfor %}",
    "wide center filter": "{{ 'x'|center(1000000000) }}",
    "wide center method": "{{ 'x'.center(1000000000) }}",
    "wide % format": "{{ '%0999999999d' % 1 }}",
    "wide str.format": "{{ '{:>999999999}'.format('x') }}",
    "replace blow-up": "{% set s = 'a' * 100000 %}{{ s.replace('a', s) }}",
    "huge power": "{{ 2 ** 100000000 }}",
}


@pytest.mark.parametrize("template", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_templates_stop_with_one_line(template):
    started = time.monotonic()
    with pytest.raises(TemplateLimitError) as e:
        render_chat(template, MESSAGES, "<s>", "</s>")
    assert "\n" not in str(e.value)
    assert time.monotonic() - started < MAX_SECONDS + 3


def test_ordinary_templates_still_render():
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content|trim }}{% endfor %}{{ messages|tojson }}"
    text = render_chat(template, MESSAGES, "<s>", "</s>")
    assert text.startswith("<|user|>hi<|assistant|>hello[") and json.loads(text[text.index("[") :]) == MESSAGES


def _with_template(tiny_bundle, tmp_path, template):
    bundle = copy_bundle(tiny_bundle("llama"), tmp_path / "bundle")
    (bundle / "chat_template.jinja").write_text(template)
    reseal(bundle)
    return bundle


def test_generate_and_training_report_a_runaway_template_in_one_line(tiny_bundle, tmp_path):
    bundle = _with_template(tiny_bundle, tmp_path, HOSTILE["macro recursion"])
    with pytest.raises(EdgetuneError) as e:
        Generator(bundle).chat([{"role": "user", "content": "hi"}], 4)
    assert "chat template: template calls nested deeper than" in str(e.value) and "\n" not in str(e.value)
    tokenizer, info = load_tokenizer(bundle)
    with pytest.raises(DataError, match=r"^data\.jsonl:3: chat template: \* makes a value larger than"):
        example = {"messages": MESSAGES, "source": "data.jsonl:3"}
        encode_example(example, tokenizer, dataclasses.replace(info, chat_template=HOSTILE["string repeat"]), 64)
