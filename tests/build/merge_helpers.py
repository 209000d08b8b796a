"""Run a merged model folder (Optimum names, empty KV cache) for the merge tests."""

import numpy as np
import onnxruntime as ort

from edgetune.runtime.merge import MERGED_MODEL


def prefill_logits(model_dir, ids: np.ndarray) -> np.ndarray:
    """Logits (B, S, V) of a merged folder's model.onnx for `ids`, nothing cached."""
    sess = ort.InferenceSession(str(model_dir / MERGED_MODEL), providers=["CPUExecutionProvider"])
    b, s = ids.shape
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.tile(np.arange(s), (b, 1))}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((b, i.shape[1], 0, i.shape[3]), np.float32)
    return sess.run(["logits"], {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})[0]
