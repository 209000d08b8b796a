import jinja2
import pytest

from edgetune.runtime.chat_template import assistant_spans, render_chat

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [
        {"role": "system", "content": "Answer in ISO dates."},
        {"role": "user", "content": "3rd of May 2021?"},
        {"role": "assistant", "content": "2021-05-03"},
        {"role": "user", "content": "And 1 Jan 99?"},
        {"role": "assistant", "content": "1999-01-01"},
    ],
    [
        {"role": "user", "content": "  spaces \n and {{ braces }} <b>html</b> ünïcode  "},
        {"role": "assistant", "content": ""},
    ],
]

# Exercises what transformers' environment adds: tojson (no HTML escaping), loopcontrols,
# the {% generation %} tag, raise_exception, and unset special tokens.
FEATURE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
    "{{ m | tojson }}\n{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{{ eos_token }}"
    "{% endgeneration %}{% endif %}\n{% endfor %}{% if tools is not none %}TOOLS{% endif %}"
    "{% if add_generation_prompt %}>>{% endif %}"
)


@pytest.mark.slow
@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_smollm2_parity_with_transformers(smollm2_hf_tokenizer, index, add_generation_prompt):
    tok, messages = smollm2_hf_tokenizer, CONVERSATIONS[index]
    expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    got = render_chat(tok.chat_template, messages, tok.bos_token, tok.eos_token, add_generation_prompt)
    assert got == expected


@pytest.mark.parametrize("bos,eos", [("<s>", "</s>"), (None, None)])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_environment_parity_with_transformers(bos, eos, add_generation_prompt):
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    tokens = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v is not None}
    for messages in CONVERSATIONS:
        (expected,), _ = utils.render_jinja_template(
            conversations=[messages],
            chat_template=FEATURE_TEMPLATE,
            add_generation_prompt=add_generation_prompt,
            **tokens,
        )
        assert render_chat(FEATURE_TEMPLATE, messages, bos, eos, add_generation_prompt) == expected


def test_raise_exception_is_a_template_error():
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
    with pytest.raises(jinja2.TemplateError, match="first must be user"):
        render_chat(template, [{"role": "assistant", "content": "x"}], None, None)


def test_sandbox_blocks_unsafe_access():
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat("{{ messages.__class__.__mro__ }}", [], None, None)


@pytest.mark.slow
def test_smollm2_spans_cover_content_and_end_marker(smollm2_hf_tokenizer):
    tok = smollm2_hf_tokenizer
    messages = CONVERSATIONS[2]
    text, spans = assistant_spans(tok.chat_template, messages, tok.bos_token, tok.eos_token)
    assert text == tok.apply_chat_template(messages, tokenize=False)
    assert [text[a:b] for a, b in spans] == ["2021-05-03<|im_end|>", "1999-01-01<|im_end|>"]


@pytest.mark.slow
def test_smollm2_assistant_first_turn(smollm2_hf_tokenizer):
    """The template injects a default system turn before an opening assistant turn."""
    tok = smollm2_hf_tokenizer
    messages = [{"role": "assistant", "content": "Ask me."}, {"role": "user", "content": "Ok"}]
    text, spans = assistant_spans(tok.chat_template, messages, tok.bos_token, tok.eos_token)
    assert text.startswith("<|im_start|>system\n")
    assert [text[a:b] for a, b in spans] == ["Ask me.<|im_end|>"]


def test_template_without_generation_prompt():
    """Llama-2 style: the assistant turn is whatever the message appends (content + eos)."""
    template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}"
    )
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    text, spans = assistant_spans(template, messages, "<s>", "</s>")
    assert text == "<s>[INST] a [/INST] b </s>[INST] c [/INST] d </s>"
    assert [text[a:b] for a, b in spans] == [" b </s>", " d </s>"]


def test_not_prefix_stable_template_is_refused():
    template = "{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}|{% endfor %}"
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    with pytest.raises(ValueError, match="not prefix-stable at message 1"):
        assistant_spans(template, messages, None, None)
