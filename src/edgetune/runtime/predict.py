"""Prediction with an encoder bundle: labels, tags or answer spans, in batches, torch-free.

    c = Classifier("artifacts/spam", adapter="runs/spam/adapter")
    c.predict(["Win a FREE cruise now!!!", "Minutes of Monday's meeting attached"])  # ['spam', 'ham']
    Tagger("artifacts/ner", adapter=...).predict([["Alice", "meets", "Bob"]])      # [['B-PER', 'O', 'B-PER']]
    Reader("artifacts/qa", adapter=...).predict([{"question": ..., "context": ...}])  # [{'answer': ..., 'start': ...}]

The session runs the bundle's inference graph with the adapter folded in (without an adapter,
the bundle's own initial tensors: LoRA's B = 0, the untrained head), by default with int8
weights; precision="fp32" (`edgetune predict --precision fp32`) keeps them float
(`predict_graph`).
"""

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgetune.common.bundle import open_bundle
from edgetune.common.errors import BundleError
from edgetune.common.names import CHECKPOINT
from edgetune.common.peft import bundle_adapter_keys, load_adapter, to_graph_layout
from edgetune.common.trust import resolve_trust
from edgetune.runtime.batching import load_tokenizer
from edgetune.runtime.predict_graph import PRECISIONS, prediction_session, prediction_session_options
from edgetune.runtime.predictions import decode_outputs, score
from edgetune.runtime.task_batching import encode_task, pad_features, prepare_tokenizer
from edgetune.runtime.task_data import read_task_examples

DEFAULT_SEQ_LEN = 256


class EncoderPredictor:
    """An encoder bundle's inference session with one adapter; predictions in batches."""

    task = None  # a subclass's task, checked against the bundle's

    def __init__(
        self,
        bundle: str | os.PathLike,
        adapter: str | os.PathLike | None = None,
        seq_len: int = DEFAULT_SEQ_LEN,
        batch_size: int = 32,
        session_options: ort.SessionOptions | None = None,
        *,
        trust: str | os.PathLike | None = None,
        precision: str = "int8",
    ):
        """Load `bundle` (with `open_bundle`) and `adapter` (None: the bundle's untrained head).

        precision: "int8" (int8 weights in the encoder's linear layers) or "fp32".

        trust: a trusted public keys file (else $EDGETUNE_TRUSTED_KEYS); with keys, the bundle
        and every adapter must be signed by one of them.
        """
        self.trust = resolve_trust(trust)
        self.opened = open_bundle(bundle, trust=self.trust)
        self.bundle = self.opened.folder
        self.manifest = self.opened.manifest
        if self.manifest["task"] == "causal-lm" or (self.task and self.manifest["task"] != self.task):
            raise BundleError(f"{bundle}: a {self.manifest['task']} bundle, not {self.task or 'an encoder task'}")
        self.task = self.manifest["task"]
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.precision = precision
        self.session_options = session_options or prediction_session_options(precision)
        self.labels = self.manifest.get("labels") or []
        self.batch_size = batch_size
        tokenizer, self.info = load_tokenizer(self.bundle)
        self.tokenizer = prepare_tokenizer(tokenizer, seq_len, self.task)
        self.set_adapter(adapter)

    def set_adapter(self, adapter: str | os.PathLike | None) -> None:
        """Serve another adapter (None: the bundle's initial tensors): a new session with it folded in."""
        if adapter is None:
            weights, config = self._initial_adapter(), self.manifest["adapter_config"]
        else:
            peft_weights, config = load_adapter(Path(adapter), self.manifest, trust=self.trust)
            weights = to_graph_layout(peft_weights)
        self.session = None  # the old one's memory is free before the new one loads
        self.session = prediction_session(self.opened, weights, config, self.precision, self.session_options)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def _initial_adapter(self) -> dict[str, np.ndarray]:
        """The bundle checkpoint's adapter tensors (graph layout)."""
        from edgetune.runtime.ort_training import CheckpointState

        state = CheckpointState.load_checkpoint(str(self.opened.path(CHECKPOINT)))
        return {key: state.parameters[key].data.copy() for key in bundle_adapter_keys(self.manifest)}

    def predict_examples(self, examples: list[dict]) -> list[dict]:
        """One prediction dict per example (the task's parsed form: see `task_data`)."""
        features = encode_task(examples, self.tokenizer, self.task)
        order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))  # little padding
        outputs: list = [None] * len(features)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = pad_features([features[i] for i in rows], self.info.pad_id)
            feeds = {name: batch.arrays[name] for name in self.inputs if name in batch.arrays}
            results = self.session.run(self.outputs, feeds)
            for b, i in enumerate(rows):
                outputs[i] = tuple(r[b] for r in results)
        return decode_outputs(self.task, examples, features, outputs, self.labels)

    def predict_file(self, path: str | os.PathLike, limit: int | None = None) -> tuple[list[dict], list[dict], dict]:
        """Predict a JSONL file -> (examples, predictions, metrics over the lines that carry references)."""
        examples, _ = read_task_examples(path, self.task, self.labels, labelled=False)
        examples = examples[:limit]
        predictions = self.predict_examples(examples)
        return examples, predictions, score(self.task, examples, predictions, self.labels)


class Classifier(EncoderPredictor):
    """Text classification: `predict(texts)` -> label names; `predict_proba(texts)` -> (N, C)."""

    task = "text-classification"

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> list[str]:
        """The label of each text (with `pairs`: of each (text, pair))."""
        return [p["label"] for p in self._predict(texts, pairs)]

    def predict_proba(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """Each label's probability per text, (N, C)."""
        return np.array([p["probabilities"] for p in self._predict(texts, pairs)], np.float32)

    def _predict(self, texts, pairs):
        pairs = pairs or [None] * len(texts)
        return self.predict_examples([{"text": t, "text_pair": p} for t, p in zip(texts, pairs)])


class Tagger(EncoderPredictor):
    """Token classification: `predict(sentences)` (each a list of words) -> one tag per word."""

    task = "token-classification"

    def predict(self, sentences: list[list[str]]) -> list[list[str]]:
        """The tags of each sentence's words."""
        return [p["tags"] for p in self.predict_examples([{"tokens": s} for s in sentences])]


class Reader(EncoderPredictor):
    """Extractive question answering: `predict([{"question", "context"}, ...])` -> {"answer", "start"} each."""

    task = "question-answering"

    def predict(self, questions: list[dict]) -> list[dict]:
        """The best answer span of each question in its context."""
        return self.predict_examples([{"question": q["question"], "context": q["context"]} for q in questions])
