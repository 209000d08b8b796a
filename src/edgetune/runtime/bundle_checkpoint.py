"""A bundle's own ORT checkpoint, read outside a training run: the adapter a bundle starts from.

The checkpoint holds the adapter's initial tensors (LoRA's A from the build's seed, B zero,
an encoder's task head) and, for a bundle built with `base_delta`, the zero base deltas, in
the graphs' layout. Only ONNX Runtime's training API is needed (no torch, no Flower), so a
device reads it as a server does.
"""

from pathlib import Path

import numpy as np

from edgetune.common.errors import BundleError
from edgetune.common.names import CHECKPOINT
from edgetune.common.peft import bundle_adapter_keys, bundle_delta_keys, to_peft_layout
from edgetune.runtime.ort_training import CheckpointState


def bundle_adapter(bundle: Path, manifest: dict) -> dict[str, np.ndarray]:
    """The bundle's initial adapter (and zero base deltas, if built with them), PEFT layout, from its checkpoint."""
    try:
        state = CheckpointState.load_checkpoint(str(Path(bundle) / CHECKPOINT))
    except RuntimeError:
        raise BundleError(f"{Path(bundle) / CHECKPOINT}: not a readable ORT checkpoint") from None
    keys = bundle_adapter_keys(manifest) + bundle_delta_keys(manifest)
    return to_peft_layout({key: state.parameters[key].data for key in keys})
