"""The server's view of a global adapter: held-out loss on the bundle's eval graph, and exact match.

The loss is the runtime's eval graph on ONNX Runtime Training (base deltas included, for
fedex), weighted by loss tokens as `edgetune train` weighs its eval loss. Exact match
greedy-decodes the prompts as `edgetune eval` does (batched on the bundle's serving graph);
an adapter with base deltas is merged first and decoded one prompt at a time (the serving
and inference graphs take no delta).
"""

import math
import tempfile
from pathlib import Path

import numpy as np

from edgetune.common.names import BASE_DELTA
from edgetune.runtime.batching import IGNORE, encode_examples, load_tokenizer, make_batches
from edgetune.runtime.bundle_checkpoint import batch_losses
from edgetune.runtime.data import read_examples
from edgetune.runtime.evaluate import ADAPTER, evaluate_exact_match, open_decoder
from edgetune.runtime.merge import merge


def heldout_loss(bundle: Path, arrays: dict[str, np.ndarray], data: Path, batch_size: int, seq_len: int) -> float:
    """Mean loss per loss token of `data` under the adapter (and deltas) `arrays`, PEFT layout."""
    tokenizer, info = load_tokenizer(bundle)
    examples, _ = read_examples(data)
    encoded, _ = encode_examples(examples, tokenizer, info, seq_len)
    batches = make_batches(encoded, batch_size, 0, 0, info.pad_id)
    total, count = 0.0, 0
    for batch, loss in zip(batches, batch_losses(bundle, arrays, batches, train=False)):
        tokens = int((batch.labels != IGNORE).sum())
        total += loss * tokens
        count += tokens
    loss = total / count
    return loss if math.isfinite(loss) else float("nan")


def exact_match(bundle: Path, adapter: Path, data: Path, limit: int | None) -> float:
    """Held-out exact match of the adapter folder (merged first if it carries base deltas)."""
    if not (adapter / BASE_DELTA).is_file():
        return evaluate_exact_match(open_decoder(bundle, adapter), data, limit=limit, adapter=ADAPTER).accuracy
    with tempfile.TemporaryDirectory(prefix="edgetune-fed-merged-") as tmp:
        merge(bundle, adapter, Path(tmp) / "merged")
        return evaluate_exact_match(open_decoder(Path(tmp) / "merged"), data, limit=limit).accuracy
