"""A bundle's own ORT checkpoint, read outside a training run: its initial adapter, and losses with another.

The checkpoint holds the adapter's initial tensors (LoRA's A from the build's seed, B zero,
an encoder's task head) and, for a bundle built with `base_delta`, the zero base deltas, in
the graphs' layout. `bundle_adapter` reads them; `batch_losses` puts another adapter in
their place and runs batches through the training or eval graph, with no optimizer step.
Only ONNX Runtime's training API is needed (no torch, no Flower), so a device does this as
a server does.
"""

from pathlib import Path

import numpy as np

from edgetune.common.errors import BundleError
from edgetune.common.names import CHECKPOINT, EVAL_MODEL, TRAINING_MODEL
from edgetune.common.peft import bundle_adapter_keys, bundle_delta_keys, to_graph_layout, to_peft_layout
from edgetune.runtime.ort_training import CheckpointState, Module, training_session_options


def bundle_adapter(bundle: Path, manifest: dict) -> dict[str, np.ndarray]:
    """The bundle's initial adapter (and zero base deltas, if built with them), PEFT layout, from its checkpoint."""
    try:
        state = CheckpointState.load_checkpoint(str(Path(bundle) / CHECKPOINT))
    except RuntimeError:
        raise BundleError(f"{Path(bundle) / CHECKPOINT}: not a readable ORT checkpoint") from None
    keys = bundle_adapter_keys(manifest) + bundle_delta_keys(manifest)
    return to_peft_layout({key: state.parameters[key].data for key in keys})


def batch_losses(bundle: Path, adapter: dict[str, np.ndarray], batches: list, *, train: bool) -> list[float]:
    """The graph's loss on each batch, with `adapter` (PEFT layout; base deltas too, if any) loaded.

    train: the training graph (what `edgetune train` steps on; each batch's gradients are
    dropped), else the eval graph. The adapter stays as given: no optimizer step.
    """
    bundle = Path(bundle)
    state = CheckpointState.load_checkpoint(str(bundle / CHECKPOINT))
    module = Module(
        str(bundle / TRAINING_MODEL), state, str(bundle / EVAL_MODEL), session_options=training_session_options()
    )
    for key, value in to_graph_layout(adapter).items():  # only once a Module owns the state
        state.parameters[key] = value
    if train:
        module.train()
    else:
        module.eval()
    names = module.input_names()
    losses = []
    for batch in batches:
        losses.append(float(module(*(getattr(batch, n) for n in names))))
        if train:
            module.lazy_reset_grad()
    return losses
