"""Prefill logits of a serving graph on the latest onnxruntime, with its defaults and with an .onnx_adapter.

Runs in .venvs/ort:
    python scripts/peer_checks/ort_lora_logits.py MODEL.onnx ADAPTER.onnx_adapter IDS.npy OUT.npz
OUT.npz gets `base` (no adapter: the graph's zero LoRA defaults) and `adapted` (the adapter
loaded with ort.LoraAdapter and made active with RunOptions.add_active_adapter), both
(B, S, V) for IDS (B, S) with an empty KV cache.
"""

import sys

import numpy as np
import onnxruntime as ort


def main() -> None:
    """Run MODEL on IDS without and with the adapter; save both logits."""
    model, adapter_path, ids_path, out = sys.argv[1:5]
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    ids = np.load(ids_path)
    b, s = ids.shape
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.tile(np.arange(s), (b, 1))}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((b, i.shape[1], 0, i.shape[3]), np.float32)
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
    base = sess.run(["logits"], feeds)[0]
    adapter = ort.LoraAdapter()
    adapter.Load(adapter_path)
    options = ort.RunOptions()
    options.add_active_adapter(adapter)
    adapted = sess.run(["logits"], feeds, options)[0]
    np.savez(out, base=base, adapted=adapted)
    print(ort.__version__)


if __name__ == "__main__":
    main()
