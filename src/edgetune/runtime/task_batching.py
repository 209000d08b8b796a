"""Encoder tasks: tokenize examples into features and pad them into batches fed by graph input name.

    text-classification   [CLS] text [SEP] (text_pair [SEP]), cut to seq_len; one label per row
    token-classification  the words tokenized as given (is_pretokenized); a word's tag goes to its
                          first sub-token, the others and the special tokens get -100
    question-answering    [CLS] question [SEP] context [SEP]; a long context is cut into windows
                          of seq_len that overlap by `stride` tokens, one feature each; the
                          answer's first and last token, or [CLS] (0) when a window lacks it

A feature keeps its example's index (and, for QA, each token's character offsets in the
context), so predictions map back to words and answer strings. Batching groups features of
similar length as the causal-LM batches do (`batching.batch_groups`).
"""

from dataclasses import dataclass, field

import numpy as np
import tokenizers

from edgetune.common.names import (
    ATTENTION_MASK,
    CLASS_WEIGHTS,
    END_POSITIONS,
    INPUT_IDS,
    LABELS,
    START_POSITIONS,
    TOKEN_TYPE_IDS,
)
from edgetune.runtime.batching import IGNORE, batch_groups

QA_STRIDE = 128  # tokens shared by consecutive windows of a long context (HF's run_qa default)


@dataclass
class Feature:
    """One row of model input, tied to its example."""

    example: int  # its index in the data file's examples
    data: dict  # the example itself
    input_ids: list[int]
    type_ids: list[int]
    target: object = None  # label index | per-token labels | (start, end) token positions | None
    offsets: list = field(default_factory=list)  # per token: QA (start, end) in the context; NER its word
    truncated: bool = False


class TaskBatch:
    """A padded batch: its arrays by graph input name, and the features it holds."""

    def __init__(self, arrays: dict[str, np.ndarray], features: list[Feature]):
        self.arrays, self.features = arrays, features
        self.attention_mask = arrays[ATTENTION_MASK]  # (B, S): 1 real token, 0 padding

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["arrays"][name]
        except KeyError:
            raise AttributeError(name) from None


def prepare_tokenizer(tokenizer: tokenizers.Tokenizer, seq_len: int, task: str) -> tokenizers.Tokenizer:
    """No padding (batches pad themselves) and truncation to seq_len (QA: of the context, in windows)."""
    tokenizer.no_padding()
    if task == "question-answering":
        tokenizer.enable_truncation(seq_len, stride=min(QA_STRIDE, seq_len // 4), strategy="only_second")
    else:
        tokenizer.enable_truncation(seq_len)
    return tokenizer


def encode_task(examples: list[dict], tokenizer: tokenizers.Tokenizer, task: str) -> list[Feature]:
    """The features of `examples` (a prepared tokenizer: see `prepare_tokenizer`)."""
    return ENCODERS[task](examples, tokenizer)


def _classification(examples: list[dict], tokenizer) -> list[Feature]:
    pairs = [(e["text"], e["text_pair"]) if e.get("text_pair") else e["text"] for e in examples]
    encodings = tokenizer.encode_batch(pairs)
    return [
        Feature(i, e, enc.ids, enc.type_ids, e.get("label"), truncated=bool(enc.overflowing))
        for i, (e, enc) in enumerate(zip(examples, encodings))
    ]


def _token_classification(examples: list[dict], tokenizer) -> list[Feature]:
    encodings = tokenizer.encode_batch([e["tokens"] for e in examples], is_pretokenized=True)
    features = []
    for i, (e, enc) in enumerate(zip(examples, encodings)):
        labels, previous = [], None
        for word in enc.word_ids:  # the first sub-token of each word carries its tag
            first = word is not None and word != previous
            labels.append(e["tags"][word] if first and e.get("tags") else IGNORE)
            previous = word
        words = {w for w in enc.word_ids if w is not None}
        features.append(Feature(i, e, enc.ids, enc.type_ids, labels, enc.word_ids, len(words) < len(e["tokens"])))
    return features


def _question_answering(examples: list[dict], tokenizer) -> list[Feature]:
    encodings = tokenizer.encode_batch([(e["question"], e["context"]) for e in examples])
    features = []
    for i, (e, first) in enumerate(zip(examples, encodings)):
        for enc in [first, *first.overflowing]:
            offsets = [o if s == 1 else None for o, s in zip(enc.offsets, enc.sequence_ids)]
            target = _answer_tokens(offsets, e["answers"][0]) if e.get("answers") else None
            if e.get("answers") == []:
                target = (0, 0)
            features.append(Feature(i, e, enc.ids, enc.type_ids, target, offsets))
    return features


def _answer_tokens(offsets: list, answer: tuple[str, int]) -> tuple[int, int]:
    """The answer's first and last token in one window, or (0, 0) ([CLS]) if the window lacks part of it."""
    text, start = answer
    end = start + len(text)
    inside = [t for t, o in enumerate(offsets) if o is not None]
    if not inside or offsets[inside[0]][0] > start or offsets[inside[-1]][1] < end:
        return 0, 0
    first = next(t for t in inside if offsets[t][1] > start)
    last = next(t for t in reversed(inside) if offsets[t][0] < end)
    return first, last


ENCODERS = {
    "text-classification": _classification,
    "token-classification": _token_classification,
    "question-answering": _question_answering,
}


def make_task_batches(
    features: list[Feature],
    batch_size: int,
    seed: int,
    epoch: int,
    pad_id: int,
    class_weights: np.ndarray | None = None,
) -> list[TaskBatch]:
    """Padded batches of `features`, deterministic in (seed, epoch); `class_weights` (C,) go into each."""
    groups = batch_groups([len(f.input_ids) for f in features], batch_size, seed, epoch)
    return [pad_features([features[i] for i in group], pad_id, class_weights) for group in groups]


def pad_features(rows: list[Feature], pad_id: int, class_weights: np.ndarray | None = None) -> TaskBatch:
    """Right-pad features into one batch; the targets become the task's label arrays."""
    size = max(len(r.input_ids) for r in rows)
    ids = np.full((len(rows), size), pad_id, np.int64)  # (B, S)
    types = np.zeros((len(rows), size), np.int64)
    mask = np.zeros((len(rows), size), np.int64)
    for b, row in enumerate(rows):
        n = len(row.input_ids)
        ids[b, :n], types[b, :n], mask[b, :n] = row.input_ids, row.type_ids, 1
    arrays = {INPUT_IDS: ids, ATTENTION_MASK: mask, TOKEN_TYPE_IDS: types}
    targets = [r.target for r in rows]
    if all(t is not None for t in targets):
        first = targets[0]
        if isinstance(first, tuple):  # QA: (start, end) per row
            arrays[START_POSITIONS] = np.array([t[0] for t in targets], np.int64)  # (B,)
            arrays[END_POSITIONS] = np.array([t[1] for t in targets], np.int64)
        elif isinstance(first, list):  # token labels
            labels = np.full((len(rows), size), IGNORE, np.int64)  # (B, S)
            for b, t in enumerate(targets):
                labels[b, : len(t)] = t
            arrays[LABELS] = labels
        else:
            arrays[LABELS] = np.array(targets, np.int64)  # (B,)
    if class_weights is not None:
        arrays[CLASS_WEIGHTS] = class_weights
    return TaskBatch(arrays, rows)


def class_weights(features: list[Feature], num_labels: int, auto: bool) -> np.ndarray:
    """Each label's weight in the loss: 1, or with `auto` N / (C · n_c) over the labelled rows or tokens
    (sklearn's "balanced"; a label absent from the data gets 0)."""
    if not auto:
        return np.ones(num_labels, np.float32)
    labels = []
    for f in features:
        labels += [t for t in f.target if t != IGNORE] if isinstance(f.target, list) else [f.target]
    counts = np.bincount(np.array(labels, np.int64), minlength=num_labels).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_labels * np.maximum(counts, 1)), 0.0)
    return weights.astype(np.float32)
