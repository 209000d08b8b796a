import dataclasses
import json
import random
import subprocess
import sys

import numpy as np
import pytest

from edgetune.common.errors import DataError
from edgetune.runtime.batching import (
    IGNORE,
    Encoded,
    encode_example,
    encode_examples,
    load_tokenizer,
    make_batches,
    padding_fraction,
)


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def loss_targets(enc):
    """The token ids that get loss, recovered from the shifted labels."""
    return [label for label in enc.labels if label != IGNORE]


def check_shift(enc):
    assert len(enc.input_ids) == len(enc.labels)
    assert enc.labels[-1] == IGNORE
    for t, label in enumerate(enc.labels[:-1]):
        assert label in (IGNORE, enc.input_ids[t + 1])


def test_load_tokenizer_info(tiny):
    tok, info = tiny
    assert (info.bos_id, info.eos_id, info.pad_id) == tuple(tok.token_to_id(t) for t in ("<s>", "</s>", "<pad>"))
    assert info.add_bos and info.chat_template.startswith("{{ bos_token }}")


def test_load_tokenizer_jinja_file_and_fallbacks(tiny_tokenizer_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((tiny_tokenizer_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": {"content": "</s>", "__type": "AddedToken"}, "chat_template": "ignored"})
    )
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>"}))
    (tmp_path / "chat_template.jinja").write_text("T")
    tok, info = load_tokenizer(tmp_path)
    assert info.chat_template == "T" and info.bos_token == "<s>"
    assert info.pad_id == info.eos_id == tok.token_to_id("</s>")
    assert not info.add_bos  # no add_bos_token key and the post-processor adds nothing


def test_text_loss_on_every_token_plus_eos(tiny):
    tok, info = tiny
    enc = encode_example({"text": "the cat sat"}, tok, info, seq_len=64)
    body = ids(tok, "the cat sat")
    assert enc.input_ids == [info.bos_id] + body + [info.eos_id]
    assert enc.labels == body + [info.eos_id, IGNORE]
    assert not enc.truncated
    check_shift(enc)


def test_prompt_completion_loss_on_completion_only(tiny):
    tok, info = tiny
    enc = encode_example({"prompt": "what day is it?", "completion": " the day"}, tok, info, seq_len=64)
    prompt, completion = ids(tok, "what day is it?"), ids(tok, " the day")
    assert enc.input_ids == [info.bos_id] + prompt + completion + [info.eos_id]
    assert enc.labels == [IGNORE] * len(prompt) + completion + [info.eos_id, IGNORE]
    check_shift(enc)


def test_messages_loss_on_assistant_turns_only(tiny):
    tok, info = tiny
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "date?"},
        {"role": "assistant", "content": "the day"},
    ]
    enc = encode_example({"messages": messages}, tok, info, seq_len=256)
    check_shift(enc)
    assert enc.input_ids[0] == info.bos_id  # from the template's {{ bos_token }}
    end = tok.token_to_id("<|im_end|>")
    assert loss_targets(enc) == ids(tok, "hi there") + [end] + ids(tok, "the day") + [end]
    assert tok.decode(enc.input_ids, skip_special_tokens=False).count("<|im_end|>") == 5


def test_truncation(tiny):
    tok, info = tiny
    full = encode_example({"text": "the cat sat on the mat " * 10}, tok, info, seq_len=1000)
    enc = encode_example({"text": "the cat sat on the mat " * 10}, tok, info, seq_len=8)
    assert enc.truncated and len(enc.input_ids) == 8
    assert enc.input_ids == full.input_ids[:8] and enc.labels == full.labels[:7] + [IGNORE]


def test_encode_examples_summary_drops_examples_without_loss(tiny):
    tok, info = tiny
    examples = [
        {"text": "the cat"},
        {"prompt": "the cat sat on the mat " * 5, "completion": " dog"},
        {"text": "a dog " * 20},
    ]
    encoded, summary = encode_examples(examples, tok, info, seq_len=10)
    assert (summary.examples, summary.truncated, summary.dropped) == (3, 2, 1)
    assert len(encoded) == 2
    assert summary.tokens == sum(len(e.input_ids) for e in encoded)
    assert summary.loss_tokens == sum(len(loss_targets(e)) for e in encoded)


def test_messages_errors_name_the_line(tiny):
    tok, info = tiny
    example = {"messages": [{"role": "assistant", "content": "x"}], "source": "chat.jsonl:4"}
    broken = dataclasses.replace(info, chat_template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(DataError, match=r"^chat\.jsonl:4: chat template: roles must alternate$"):
        encode_example(example, tok, broken, 32)
    none = dataclasses.replace(info, chat_template=None)
    with pytest.raises(DataError, match=r"^chat\.jsonl:4: messages need a chat template"):
        encode_example(example, tok, none, 32)


@pytest.mark.slow
def test_smollm2_chat_labels(smollm2_dir, smollm2_hf_tokenizer):
    tok, info = load_tokenizer(smollm2_dir)
    messages = [
        {"role": "user", "content": "Normalise: 3rd of May 2021"},
        {"role": "assistant", "content": "2021-05-03"},
        {"role": "user", "content": "Normalise: 1 Jan 99"},
        {"role": "assistant", "content": " 1999-01-01"},
    ]
    enc = encode_example({"messages": messages}, tok, info, seq_len=512)
    hf = smollm2_hf_tokenizer
    assert enc.input_ids == hf.apply_chat_template(messages, tokenize=True)  # same text, same tokens
    check_shift(enc)
    end = tok.token_to_id("<|im_end|>")
    assert loss_targets(enc) == ids(tok, "2021-05-03") + [end] + ids(tok, " 1999-01-01") + [end]


def lengths_to_encoded(lengths):
    return [Encoded([5] * n, [7] * (n - 1) + [IGNORE], False) for n in lengths]


def test_batch_arrays_and_masks():
    encoded = lengths_to_encoded([3, 5, 2])
    (batch,) = make_batches(encoded, batch_size=4, seed=0, epoch=0, pad_id=0)
    assert batch.input_ids.dtype == np.int64 and batch.input_ids.shape == (3, 5)
    for b in range(3):
        n = int(batch.attention_mask[b].sum())
        assert batch.attention_mask[b].tolist() == [1] * n + [0] * (5 - n)
        assert batch.position_ids[b].tolist() == list(range(n)) + [0] * (5 - n)
        assert batch.input_ids[b].tolist() == [5] * n + [0] * (5 - n)
        assert batch.labels[b].tolist() == [7] * (n - 1) + [IGNORE] * (6 - n)
    assert padding_fraction([batch]) == pytest.approx(5 / 15)


def test_batches_deterministic_and_epoch_dependent():
    encoded = lengths_to_encoded(random.Random(1).choices(range(2, 60), k=500))

    def rows(seed, epoch):  # the real length of every row, batch by batch
        return [tuple(b.attention_mask.sum(1)) for b in make_batches(encoded, 8, seed, epoch, pad_id=0)]

    assert rows(3, 0) == rows(3, 0)
    assert rows(3, 0) != rows(3, 1) and rows(3, 0) != rows(4, 0)
    sizes = [len(r) for r in rows(3, 0)]
    assert sum(sizes) == 500 and len(sizes) == 63 and sizes.count(4) == 1  # only the last batch is short


def test_length_grouping_cuts_padding():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(5, 20), rng.randint(100, 400)]) for _ in range(800)]
    encoded = lengths_to_encoded(lengths)
    grouped = padding_fraction(make_batches(encoded, 8, seed=0, epoch=0, pad_id=0))
    rng.shuffle(encoded)  # random batching: consecutive groups of 8, each padded on its own
    naive = padding_fraction([make_batches(encoded[i : i + 8], 8, 0, 0, pad_id=0)[0] for i in range(0, 800, 8)])
    assert grouped < 0.1 < naive


def test_runtime_modules_import_no_training_frameworks():
    code = (
        "import sys, edgetune.runtime.data, edgetune.runtime.chat_template, edgetune.runtime.batching;"
        "bad = {'torch', 'transformers', 'optimum', 'peft'} & {m.split('.')[0] for m in sys.modules};"
        "sys.exit(sorted(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
