"""What the training recipe asks of a bundle's task: encode a data file, batch it, evaluate.

    CausalLMTask   text, prompt/completion or chat data; eval loss and perplexity
    EncoderTask    the classification, NER and QA formats (`task_data`), features and batches
                   (`task_batching`); eval loss and the task's metrics (`predictions`)

`train.py` holds one of them (`task_for`) and never looks at the task itself.
"""

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgetune.common.errors import ConfigError, DataError
from edgetune.options import TrainConfig
from edgetune.runtime.batching import IGNORE, DataSummary, encode_examples, load_tokenizer, make_batches
from edgetune.runtime.data import read_examples
from edgetune.runtime.predictions import decode_outputs, score
from edgetune.runtime.task_batching import class_weights, encode_task, make_task_batches, prepare_tokenizer
from edgetune.runtime.task_data import read_task_examples

Run = Callable[[object], list]  # batch -> the graph's outputs (loss first)


class CausalLMTask:
    """A causal LM's data: loss on the tokens the format marks."""

    def __init__(self, config: TrainConfig, manifest: dict):
        self.config = config
        self.tokenizer, self.info = load_tokenizer(config.bundle)

    def encode(self, path: Path, skip_bad_lines: bool) -> tuple[list, DataSummary, int]:
        """Read and tokenize a data file -> (encoded examples, DataSummary, skipped lines)."""
        examples, skipped = read_examples(path, skip_bad_lines)
        encoded, summary = encode_examples(examples, self.tokenizer, self.info, self.config.seq_len)
        if not encoded:
            raise DataError(f"{path}: no example keeps a token to learn from at --seq-len {self.config.seq_len}")
        return encoded, summary, skipped

    def batches(self, encoded: list, epoch: int, shuffle_seed: int) -> list:
        """The epoch's padded batches."""
        return make_batches(encoded, self.config.batch_size, shuffle_seed, epoch, self.info.pad_id)

    def release_tokenizer(self) -> None:
        """Free the tokenizer (~30 MB) before ORT's session opens."""
        self.tokenizer = None

    def evaluate(self, run: Run, batches: list) -> dict:
        """Eval loss over the batches, weighted by loss tokens, and its perplexity."""
        total, count = 0.0, 0
        for batch in batches:
            tokens = int((batch.labels != IGNORE).sum())
            total += float(np.asarray(run(batch)).reshape(-1)[0]) * tokens
            count += tokens
        loss = total / count
        return {"eval_loss": loss, "perplexity": math.exp(min(loss, 700.0))}


class EncoderTask:
    """An encoder task's data: labels, tags or answer spans; class weights in the loss."""

    def __init__(self, config: TrainConfig, manifest: dict):
        self.config, self.task, self.labels = config, manifest["task"], manifest.get("labels") or []
        tokenizer, self.info = load_tokenizer(config.bundle)
        self.tokenizer = prepare_tokenizer(tokenizer, config.seq_len, self.task)
        self.weights = None  # (C,) class weights, set from the training data

    def encode(self, path: Path, skip_bad_lines: bool) -> tuple[list, DataSummary, int]:
        """Read and tokenize a data file -> (features, DataSummary, skipped lines)."""
        examples, skipped = read_task_examples(path, self.task, self.labels, skip_bad_lines)
        features = encode_task(examples, self.tokenizer, self.task)
        if self.weights is None and self.labels:  # the first file encoded is the training data
            self.weights = class_weights(features, len(self.labels), self.config.class_weights == "auto")
        tokens = sum(len(f.input_ids) for f in features)
        summary = DataSummary(len(examples), sum(f.truncated for f in features), 0, tokens, tokens)
        return features, summary, skipped

    def batches(self, features: list, epoch: int, shuffle_seed: int) -> list:
        """The epoch's padded batches, each with the class weights."""
        pad = self.info.pad_id
        return make_task_batches(features, self.config.batch_size, shuffle_seed, epoch, pad, self.weights)

    def release_tokenizer(self) -> None:
        """Free the tokenizer before ORT's session opens."""
        self.tokenizer = None

    def evaluate(self, run: Run, batches: list) -> dict:
        """Eval loss (mean over batches, weighted by rows) and the task's metrics."""
        total, rows, outputs, features = 0.0, 0, [], []
        for batch in batches:
            loss, *rest = run(batch)
            total += float(loss) * len(batch.features)
            rows += len(batch.features)
            outputs += _per_row(rest, len(batch.features))
            features += batch.features
        examples = {f.example: f.data for f in features}  # every example of the eval file, by index
        examples = [examples[i] for i in sorted(examples)]
        predictions = decode_outputs(self.task, examples, features, outputs, self.labels)
        return {"eval_loss": total / rows, **score(self.task, examples, predictions, self.labels)}


def _per_row(outputs: list, rows: int) -> list[tuple]:
    """Batch outputs (each (B, ...)) -> one tuple of arrays per row."""
    return [tuple(np.asarray(o)[b] for o in outputs) for b in range(rows)]


def task_for(config: TrainConfig, manifest: dict):
    """The data pipeline of the bundle's task."""
    if config.class_weights and not manifest.get("labels"):
        raise ConfigError("class_weights", f"needs a classification bundle (this one is {manifest['task']})")
    return CausalLMTask(config, manifest) if manifest["task"] == "causal-lm" else EncoderTask(config, manifest)
