"""Tokenize examples into (input_ids, labels) and group them into padded, length-sorted batches.

Labels are already shifted for a causal LM: `labels[t]` is the target of position t,
i.e. `input_ids[t + 1]`, or -100 where no loss is taken (prompt, non-assistant turns,
the last position, padding). The loss graph therefore compares logits[:, t] with
labels[:, t] directly.
"""

import json
import os
from dataclasses import dataclass
from typing import NamedTuple

import jinja2
import numpy as np
import tokenizers

from edgetune.common.errors import BundleError, DataError
from edgetune.runtime.chat_template import assistant_spans

IGNORE = -100
CHUNK_BATCHES = 50  # length-sort within shuffled chunks of this many batches


@dataclass(frozen=True)
class TokenizerInfo:
    """What encoding needs beyond `tokenizer.json`: chat template and special tokens."""

    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    bos_id: int | None
    eos_id: int | None
    pad_id: int
    add_bos: bool  # prepend BOS to plain text and prompt/completion examples


class Encoded(NamedTuple):
    """One tokenized example."""

    input_ids: list
    labels: list
    truncated: bool


@dataclass(frozen=True)
class Batch:
    """One padded batch; every array is int64 of shape (B, S), S = longest example."""

    input_ids: np.ndarray
    attention_mask: np.ndarray  # 1 real token, 0 padding
    position_ids: np.ndarray  # 0..len-1 per example, 0 on padding
    labels: np.ndarray  # shifted targets, -100 on padding


@dataclass(frozen=True)
class DataSummary:
    """Counts over an encoded data set (`dropped`: examples left without any loss token)."""

    examples: int
    truncated: int
    dropped: int
    tokens: int
    loss_tokens: int


def _token(value: str | dict | None, field: str, folder) -> str | None:
    """A special token from tokenizer_config: a string, or an AddedToken dict with `content`."""
    token = value.get("content") if isinstance(value, dict) else value
    if token is not None and not isinstance(token, str):
        raise BundleError(f"{folder}: {field} is not a string (tokenizer_config.json or special_tokens_map.json)")
    return token


def _read(folder: str | os.PathLike, name: str) -> str | None:
    """The text of `folder/name`, or None if there is no such file."""
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: cannot read as UTF-8 text ({e})") from None


def _json_object(folder: str | os.PathLike, name: str) -> dict:
    """The JSON object in `folder/name` ({} if there is no such file), with one-line errors."""
    text = _read(folder, name)
    try:
        value = json.loads(text) if text is not None else {}
    except json.JSONDecodeError as e:
        raise BundleError(f"{os.path.join(folder, name)}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise BundleError(f"{os.path.join(folder, name)}: not a JSON object")
    return value


def load_tokenizer(folder: str | os.PathLike) -> tuple[tokenizers.Tokenizer, TokenizerInfo]:
    """Load `tokenizer.json` and `tokenizer_config.json` from `folder` -> `(Tokenizer, TokenizerInfo)`.

    The chat template comes from `chat_template.jinja` if present, else from the config's
    `chat_template` (a string, or a list of named templates: "default" is used). Special
    tokens missing from the config are taken from `special_tokens_map.json`. BOS is
    prepended to plain text iff the config's `add_bos_token` says so; without that key,
    iff the tokenizer's own post-processor adds it. The pad id is the pad token's, else
    EOS's, else 0 (padding is masked, so its value never matters).
    """
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        raise BundleError(f"{folder}: no tokenizer.json")
    try:
        tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the Rust side raises plain Exception on malformed files
        raise BundleError(f"{path}: not a readable tokenizer ({' '.join(str(e).split())[:200]})") from None
    config = {**_json_object(folder, "special_tokens_map.json"), **_json_object(folder, "tokenizer_config.json")}
    template = config.get("chat_template")
    if isinstance(template, list):
        template = next(
            (t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None
        )
    template = _read(folder, "chat_template.jinja") or template
    if template is not None and not isinstance(template, str):
        raise BundleError(f"{folder}: chat_template is not a string")
    bos, eos, pad = (_token(config.get(k), k, folder) for k in ("bos_token", "eos_token", "pad_token"))
    bos_id, eos_id, pad_id = (tokenizer.token_to_id(t) if t else None for t in (bos, eos, pad))
    add_bos = config.get("add_bos_token")
    if add_bos is None:
        probe = tokenizer.encode("a", add_special_tokens=True).ids
        add_bos = bos_id is not None and probe[:1] == [bos_id]
    pad_id = next((i for i in (pad_id, eos_id) if i is not None), 0)
    info = TokenizerInfo(template, bos, eos, bos_id, eos_id, pad_id, bool(add_bos and bos_id is not None))
    return tokenizer, info


def _shift(ids: list[int], loss_mask: list[bool]) -> list[int]:
    """Targets for each position: the next token where it is in the loss, else -100."""
    return [ids[t + 1] if loss_mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]


def _ids(tokenizer: tokenizers.Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def encode_example(
    example: dict, tokenizer: tokenizers.Tokenizer, template_info: TokenizerInfo, seq_len: int
) -> Encoded:
    """Tokenize one example -> `Encoded(input_ids, labels, truncated)`, at most `seq_len` long.

    text:              [BOS] text EOS, loss on every token after the first.
    prompt/completion: [BOS] prompt completion EOS, each part tokenized on its own and the
                       ids concatenated (the boundary is exact); loss on completion + EOS.
    messages:          the chat template's text (which carries its own BOS and turn
                       markers; nothing is added), loss on tokens lying wholly inside an
                       assistant span (content + end-of-turn marker, see `assistant_spans`).
    Longer sequences are cut to `seq_len`; the last kept position then gets no target.
    Template problems raise DataError naming the example's `source` line.
    """
    info = template_info
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    if "messages" in example:
        ids, mask = _encode_chat(example, tokenizer, info)
    else:
        bos = [info.bos_id] if info.add_bos else []
        eos = [info.eos_id] if info.eos_id is not None else []
        if "text" in example:
            ids = bos + _ids(tokenizer, example["text"]) + eos
            mask = [True] * len(ids)
        else:
            head = bos + _ids(tokenizer, example["prompt"])
            tail = _ids(tokenizer, example["completion"]) + eos
            ids, mask = head + tail, [False] * len(head) + [True] * len(tail)
    truncated = len(ids) > seq_len
    ids, labels = ids[:seq_len], _shift(ids, mask)[:seq_len]
    labels[-1] = IGNORE
    return Encoded(ids, labels, truncated)


def _encode_chat(example: dict, tokenizer: tokenizers.Tokenizer, info: TokenizerInfo) -> tuple[list[int], list[bool]]:
    source = example.get("source", "<example>")
    if not info.chat_template:
        raise DataError(f"{source}: messages need a chat template, and the tokenizer has none")
    try:
        text, spans = assistant_spans(info.chat_template, example["messages"], info.bos_token, info.eos_token)
    except (jinja2.TemplateError, ValueError) as e:
        raise DataError(f"{source}: chat template: {e}") from None
    enc = tokenizer.encode(text, add_special_tokens=False)
    mask = [any(a <= s and e <= b for a, b in spans) for s, e in enc.offsets]
    return enc.ids, mask


def encode_examples(
    examples: list[dict], tokenizer: tokenizers.Tokenizer, template_info: TokenizerInfo, seq_len: int
) -> tuple[list[Encoded], DataSummary]:
    """Encode every example -> `(encoded, DataSummary)`; examples left with no loss
    token (e.g. a completion cut off by truncation) are dropped and counted."""
    encoded, truncated, dropped = [], 0, 0
    for example in examples:
        e = encode_example(example, tokenizer, template_info, seq_len)
        truncated += e.truncated
        if all(label == IGNORE for label in e.labels):
            dropped += 1
        else:
            encoded.append(e)
    tokens = sum(len(e.input_ids) for e in encoded)
    loss_tokens = sum(label != IGNORE for e in encoded for label in e.labels)
    return encoded, DataSummary(len(examples), truncated, dropped, tokens, loss_tokens)


def make_batches(encoded: list[Encoded], batch_size: int, seed: int, epoch: int, pad_id: int) -> list[Batch]:
    """Group encoded examples into padded batches, deterministically in `(seed, epoch)`.

    The examples are shuffled, cut into chunks of `50 * batch_size`, sorted by length
    within each chunk (so a batch holds similar lengths and little padding), split into
    batches, and the batch order is shuffled again. Only the very last batch may be
    smaller than `batch_size`. Right padding; no packing (one example per row).
    """
    groups = batch_groups([len(e.input_ids) for e in encoded], batch_size, seed, epoch)
    return [_pad([encoded[i] for i in group], pad_id) for group in groups]


def batch_groups(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The indices of each batch, as `make_batches` groups rows of these `lengths` (any task's)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    chunk = CHUNK_BATCHES * batch_size
    groups = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: -lengths[i])
        groups += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
    return [groups[g] for g in rng.permutation(len(groups))]


def _pad(rows: list[Encoded], pad_id: int) -> Batch:
    """Right-pad `(input_ids, labels, ...)` rows into one Batch."""
    size = max(len(r.input_ids) for r in rows)
    input_ids = np.full((len(rows), size), pad_id, dtype=np.int64)
    labels = np.full((len(rows), size), IGNORE, dtype=np.int64)
    mask = np.zeros((len(rows), size), dtype=np.int64)
    positions = np.zeros((len(rows), size), dtype=np.int64)
    for b, row in enumerate(rows):
        ids, targets = row.input_ids, row.labels
        n = len(ids)  # (S,) row b holds n real tokens
        input_ids[b, :n], labels[b, :n], mask[b, :n], positions[b, :n] = ids, targets, 1, np.arange(n)
    return Batch(input_ids, mask, positions, labels)


def padding_fraction(batches: list[Batch]) -> float:
    """Pad tokens / all tokens over `batches` (0.0 for no batches)."""
    total = sum(b.attention_mask.size for b in batches)
    return 1.0 - sum(int(b.attention_mask.sum()) for b in batches) / total if total else 0.0
