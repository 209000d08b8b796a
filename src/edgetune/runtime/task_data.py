"""Read the encoder tasks' JSONL formats, with one-line FILE:LINE errors.

    text-classification   {"text": str, "label": name | index}, optionally "text_pair": str
    token-classification  {"tokens": [str, ...], "tags": [name | index, ...]} (CoNLL style)
    question-answering    {"question": str, "context": str,
                           "answers": {"text": [str, ...], "answer_start": [int, ...]}} (SQuAD;
                           empty lists: no answer in the context)

Labels and tags become indices into the bundle's labels. For prediction the label fields
may be absent (`labelled=False`); when present they are still checked, so
`edgetune predict --metrics` can score them.
"""

import os
from collections.abc import Callable

from edgetune.runtime.data import BadLineError, json_type, read_examples


def read_task_examples(
    path: str | os.PathLike, task: str, labels: list[str], skip_bad_lines: bool = False, labelled: bool = True
) -> tuple[list[dict], int]:
    """Read `path` as `task` examples -> (examples, skipped lines); each example carries its "source" FILE:LINE."""
    parse = PARSERS[task]
    return read_examples(path, skip_bad_lines, parse=lambda obj: parse(obj, labels, labelled))


def _text(obj: dict, key: str, optional: bool = False) -> str | None:
    """A non-empty string field."""
    if key not in obj:
        if optional:
            return None
        raise BadLineError(f'missing field "{key}"')
    value = obj[key]
    if not isinstance(value, str):
        raise BadLineError(f'field "{key}" must be a string, got {json_type(value)}')
    if not value.strip():
        raise BadLineError(f'field "{key}" is empty')
    return value


def _label(value, labels: list[str], where: str) -> int:
    """A label name or index -> its index."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadLineError(f"{where} must be a label name or index, got {json_type(value)}")
    if isinstance(value, int):
        if not 0 <= value < len(labels):
            raise BadLineError(f"{where} {value} is out of range (the bundle has {len(labels)} labels)")
        return value
    if value not in labels:
        raise BadLineError(f"{where} {value!r} is not one of the bundle's labels ({','.join(labels)})")
    return labels.index(value)


def text_classification(obj: dict, labels: list[str], labelled: bool = True) -> dict:
    """{"text", "label", "text_pair"?} -> {"text", "text_pair", "label" (index or None)}."""
    example = {"text": _text(obj, "text"), "text_pair": _text(obj, "text_pair", optional=True), "label": None}
    if "label" in obj:
        example["label"] = _label(obj["label"], labels, 'field "label"')
    elif labelled:
        raise BadLineError('missing field "label"')
    return example


def token_classification(obj: dict, labels: list[str], labelled: bool = True) -> dict:
    """{"tokens", "tags"} -> {"tokens", "tags" (indices or None)}."""
    tokens = obj.get("tokens")
    if tokens is None:
        raise BadLineError('missing field "tokens"')
    if not isinstance(tokens, list) or not tokens:
        raise BadLineError(f'field "tokens" must be a non-empty list, got {json_type(tokens)}')
    for i, token in enumerate(tokens):
        if not isinstance(token, str) or not token.strip():
            raise BadLineError(f"tokens[{i}] must be a non-empty string, got {json_type(token)}")
    example = {"tokens": tokens, "tags": None}
    if "tags" in obj:
        tags = obj["tags"]
        if not isinstance(tags, list) or len(tags) != len(tokens):
            got = f"{len(tags)} tags" if isinstance(tags, list) else json_type(tags)
            raise BadLineError(f'field "tags" must be a list of one tag per token ({len(tokens)}), got {got}')
        example["tags"] = [_label(tag, labels, f"tags[{i}]") for i, tag in enumerate(tags)]
    elif labelled:
        raise BadLineError('missing field "tags"')
    return example


def question_answering(obj: dict, labels: list[str], labelled: bool = True) -> dict:
    """SQuAD's {"question", "context", "answers"} -> the same, answers as [(text, start), ...] (or None)."""
    example = {"question": _text(obj, "question"), "context": _text(obj, "context"), "answers": None}
    if "answers" not in obj:
        if labelled:
            raise BadLineError('missing field "answers"')
        return example
    answers = obj["answers"]
    if not isinstance(answers, dict) or not {"text", "answer_start"} <= set(answers):
        raise BadLineError('field "answers" must be an object with "text" and "answer_start" lists')
    texts, starts = answers["text"], answers["answer_start"]
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise BadLineError('answers "text" and "answer_start" must be lists of the same length')
    spans = []
    for i, (text, start) in enumerate(zip(texts, starts)):
        if not isinstance(text, str) or not text:
            raise BadLineError(f"answers.text[{i}] must be a non-empty string, got {json_type(text)}")
        if isinstance(start, bool) or not isinstance(start, int):
            raise BadLineError(f"answers.answer_start[{i}] must be a whole number, got {json_type(start)}")
        if example["context"][start : start + len(text)] != text:
            raise BadLineError(f"answers.text[{i}] {text!r} is not in the context at answer_start {start}")
        spans.append((text, start))
    example["answers"] = spans
    return example


PARSERS: dict[str, Callable] = {
    "text-classification": text_classification,
    "token-classification": token_classification,
    "question-answering": question_answering,
}
