"""Encoder prediction graphs side by side: emails per CPU-second, accuracy and logits against the bundle's graph.

    python benchmarks/encoder_graphs.py ADAPTER [--rounds 3]

One intra-op thread per session and process CPU time, so a shared machine's load matters
less than in wall-clock figures; the sessions take turns, each round over the 595 test
messages (batches of 32 sorted by length, seq-len 96), and the best round counts.
Compared: the bundle's inference graph fed the adapter (what prediction ran before), and
`EncoderPredictor`'s folded graph in fp32 and int8. Needs artifacts/spam (benchmarks/encoder.py).
"""

import argparse
import time

import numpy as np

from children import ROOT
from edgetune.common.names import LORA_SCALING
from edgetune.common.peft import config_scaling, load_adapter, to_graph_layout
from edgetune.runtime.ort_inference import default_session_options, open_session
from edgetune.runtime.predict import Classifier
from edgetune.runtime.predict_graph import prediction_session_options
from edgetune.runtime.task_batching import encode_task, pad_features
from edgetune.runtime.task_data import read_task_examples

SPAM = ROOT / "artifacts" / "spam"


def _one_thread(options):
    options.intra_op_num_threads = 1
    return options


def main() -> None:
    """Print one line per graph."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs = {}
    for precision in ("fp32", "int8"):
        options = _one_thread(prediction_session_options(precision))
        c = Classifier(SPAM / "bundle", args.adapter, seq_len=96, precision=precision, session_options=options)
        runs[f"folded {precision}"] = (c.session, {})
    weights, config = load_adapter(args.adapter, c.manifest)
    plain = open_session(c.opened.path("inference.onnx"), _one_thread(default_session_options()))
    feeds = to_graph_layout(weights) | {LORA_SCALING: np.array(config_scaling(config), np.float32)}
    runs = {"bundle graph fed the adapter": (plain, feeds)} | runs
    examples, _ = read_task_examples(SPAM / "data" / "test.jsonl", c.task, c.labels, labelled=False)
    gold = np.array([e["label"] if isinstance(e["label"], int) else c.labels.index(e["label"]) for e in examples])
    features = encode_task(examples, c.tokenizer, c.task)
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    batches = [
        (order[s : s + 32], pad_features([features[i] for i in order[s : s + 32]], c.info.pad_id))
        for s in range(0, len(order), 32)
    ]
    best, logits = dict.fromkeys(runs, float("inf")), {}
    for _ in range(args.rounds):
        for name, (session, extra) in runs.items():
            names = {i.name for i in session.get_inputs()}
            out = np.zeros((len(examples), len(c.labels)), np.float32)  # (N, C)
            started = time.process_time()
            for rows, batch in batches:
                out[rows] = session.run(None, {k: v for k, v in (batch.arrays | extra).items() if k in names})[0]
            best[name], logits[name] = min(best[name], time.process_time() - started), out
    reference = logits["bundle graph fed the adapter"]
    for name in runs:
        differ = int((logits[name].argmax(1) != reference.argmax(1)).sum())
        accuracy = (logits[name].argmax(1) == gold).mean()
        print(
            f"{name:30s} {len(examples) / best[name]:6.1f} emails/CPU-s  accuracy {accuracy:.4f}"
            f"  max|Δlogit| {np.abs(logits[name] - reference).max():.2e}  labels differing {differ}"
        )


if __name__ == "__main__":
    main()
