"""Greedy decoding of a merged edgetune model with nothing but onnxruntime and numpy.

Used to prove that a merged folder runs on the plain `onnxruntime` package that apps
embed:  python scripts/run_merged.py MERGED_DIR TOKEN_ID [TOKEN_ID ...] --new N
Prints one JSON object: {"onnxruntime": version, "tokens": [...], "first_logits": [...]}.
"""

import argparse
import json

import numpy as np
import onnxruntime as ort


def main() -> None:
    """Prefill the prompt ids, then decode greedily with the KV cache."""
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("ids", type=int, nargs="+")
    parser.add_argument("--new", type=int, default=8)
    args = parser.parse_args()
    sess = ort.InferenceSession(f"{args.model_dir}/model.onnx", providers=["CPUExecutionProvider"])
    past_inputs = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    names = [i.name for i in sess.get_inputs()]
    ids = np.array([args.ids], np.int64)  # (1, T)
    past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in past_inputs}
    total, out, first = ids.shape[1], [], None
    for _ in range(args.new):
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64), **past}
        if "position_ids" in names:
            feeds["position_ids"] = np.arange(total - ids.shape[1], total, dtype=np.int64)[None]
        logits, *presents = sess.run(None, feeds)  # logits (1, T, V)
        first = logits[0, -1, :8].tolist() if first is None else first
        token = int(logits[0, -1].argmax())
        out.append(token)
        past = {p.name: v for p, v in zip(past_inputs, presents)}
        ids, total = np.array([[token]], np.int64), total + 1
    print(json.dumps({"onnxruntime": ort.__version__, "tokens": out, "first_logits": first}))


if __name__ == "__main__":
    main()
