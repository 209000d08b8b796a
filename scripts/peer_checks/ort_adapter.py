"""ORT >= 1.20 multi-LoRA, the calls that work: write an .onnx_adapter, then run with and without it.

Runs in .venvs/ort (the plain onnxruntime package):
    python scripts/peer_checks/ort_adapter.py MODEL.onnx WEIGHTS.npz X.npy OUT.npz
WEIGHTS.npz maps each LoRA graph input (which has a same-named default initializer) to its
value; the file stores no alpha, so the caller folds alpha / r into B. OUT.npz gets `base`
(the graph's defaults) and `adapted` (the adapter active), and the adapter sits beside MODEL.
"""

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def write_adapter(path: Path, weights: dict) -> None:
    """Write WEIGHTS (name -> float32 array) as an .onnx_adapter file."""
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in weights.items()})
    adapter.export_adapter(str(path))


def main() -> None:
    """Run MODEL on X without and with the adapter made from WEIGHTS; save both outputs."""
    model, weights, x, out = map(Path, sys.argv[1:5])
    path = model.with_suffix(".onnx_adapter")
    write_adapter(path, dict(np.load(weights)))
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = {"x": np.load(x)}
    base = sess.run(None, feeds)[0]
    lora = ort.LoraAdapter()
    lora.Load(str(path))
    options = ort.RunOptions()
    options.add_active_adapter(lora)
    adapted = sess.run(None, feeds, options)[0]
    np.savez(out, base=base, adapted=adapted)
    print(ort.__version__)


if __name__ == "__main__":
    main()
