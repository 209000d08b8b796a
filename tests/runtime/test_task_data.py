"""The encoder tasks' data: the three formats, their bad lines (FILE:LINE), and their features."""

import json

import pytest

from edgetune.common.errors import DataError
from edgetune.runtime.batching import IGNORE
from edgetune.runtime.task_batching import class_weights, encode_task, pad_features, prepare_tokenizer
from edgetune.runtime.task_data import read_task_examples

LABELS = ["ham", "spam"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC"]
CONTEXT = "alice meets bob in paris on monday"


def _write(tmp_path, lines) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


@pytest.mark.parametrize(
    "task, labels, line, message",
    [
        ("text-classification", LABELS, {"text": "hi"}, 'missing field "label"'),
        ("text-classification", LABELS, {"text": "hi", "label": "eggs"}, "'eggs' is not one of the bundle's labels"),
        ("text-classification", LABELS, {"text": "hi", "label": 2}, "2 is out of range (the bundle has 2 labels)"),
        ("text-classification", LABELS, {"text": "", "label": 0}, 'field "text" is empty'),
        (
            "text-classification",
            LABELS,
            {"text": "a", "text_pair": 3, "label": 0},
            'field "text_pair" must be a string',
        ),
        ("token-classification", TAGS, {"tokens": ["a", "b"], "tags": ["O"]}, "one tag per token (2), got 1 tags"),
        ("token-classification", TAGS, {"tokens": [], "tags": []}, 'field "tokens" must be a non-empty list'),
        ("token-classification", TAGS, {"tokens": ["a"], "tags": ["B-ORG"]}, "tags[0] 'B-ORG' is not one of"),
        ("question-answering", [], {"question": "q", "context": CONTEXT}, 'missing field "answers"'),
        (
            "question-answering",
            [],
            {"question": "q", "context": CONTEXT, "answers": {"text": ["paris"], "answer_start": [3]}},
            "answers.text[0] 'paris' is not in the context at answer_start 3",
        ),
        (
            "question-answering",
            [],
            {"question": "q", "context": CONTEXT, "answers": {"text": ["paris"], "answer_start": []}},
            "must be lists of the same length",
        ),
        ("question-answering", [], "{not json", "malformed JSON"),
    ],
)
def test_a_bad_line_names_file_and_line(tmp_path, task, labels, line, message):
    good = {
        "text-classification": {"text": "fine", "label": "ham"},
        "token-classification": {"tokens": ["alice"], "tags": ["B-PER"]},
        "question-answering": {"question": "q", "context": CONTEXT, "answers": {"text": ["bob"], "answer_start": [12]}},
    }[task]
    path = _write(tmp_path, [good, line])
    with pytest.raises(DataError) as error:
        read_task_examples(path, task, labels)
    assert str(error.value).startswith(f"{path}:2: ") and message in str(error.value), str(error.value)
    examples, skipped = read_task_examples(path, task, labels, skip_bad_lines=True)
    assert len(examples) == 1 and skipped == 1


def test_labels_by_name_or_index_and_optional_for_prediction(tmp_path):
    path = _write(tmp_path, [{"text": "a", "label": "spam"}, {"text": "b", "label": 0}, {"text": "c"}])
    with pytest.raises(DataError, match=":3: missing field"):
        read_task_examples(path, "text-classification", LABELS)
    examples, _ = read_task_examples(path, "text-classification", LABELS, labelled=False)
    assert [e["label"] for e in examples] == [1, 0, None]


@pytest.fixture(scope="module")
def wordpiece():
    from tests.tiny_encoders import wordpiece_tokenizer

    return wordpiece_tokenizer().backend_tokenizer


def test_a_tag_goes_to_the_first_sub_token_of_its_word(wordpiece):
    tokenizer = prepare_tokenizer(wordpiece, 64, "token-classification")
    example = {"tokens": ["Alice", "zzyzx", "Paris"], "tags": [1, 0, 3]}
    (feature,) = encode_task([example], tokenizer, "token-classification")
    words = feature.offsets  # the word of each token; None for [CLS] and [SEP]
    assert words[0] is None and words[-1] is None and words.count(1) > 1  # "zzyzx" is split
    expected = [IGNORE if w is None or w == words[t - 1] else example["tags"][w] for t, w in enumerate(words)]
    assert feature.target == expected
    assert [label for label in feature.target if label != IGNORE] == [1, 0, 3]


def test_a_long_context_is_cut_into_overlapping_windows_each_with_its_answer(wordpiece):
    tokenizer = prepare_tokenizer(wordpiece, 24, "question-answering")  # stride 24 // 4 = 6
    context = " ".join(["alice meets bob in london"] * 6 + ["carol pays in paris"])
    example = {"question": "where pays carol", "context": context, "answers": [("paris", context.index("paris"))]}
    features = encode_task([example], tokenizer, "question-answering")
    assert len(features) > 2
    found = [f for f in features if f.target != (0, 0)]
    assert found, "the last window holds the answer"
    for f in found:
        first, last = f.offsets[f.target[0]][0], f.offsets[f.target[1]][1]
        assert context[first:last] == "paris"
    batch = pad_features(features, 0)
    assert batch.start_positions.shape == (len(features),) and batch.input_ids.shape[0] == len(features)


def test_auto_class_weights_are_balanced(wordpiece):
    tokenizer = prepare_tokenizer(wordpiece, 16, "text-classification")
    examples = [{"text": "a", "label": 0}] * 3 + [{"text": "b", "label": 1}]
    features = encode_task(examples, tokenizer, "text-classification")
    assert class_weights(features, 3, auto=True).tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])
    assert class_weights(features, 3, auto=False).tolist() == [1.0, 1.0, 1.0]
