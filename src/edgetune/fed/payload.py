"""What travels between the server and the nodes: PEFT-keyed float32 arrays, per strategy.

    strategy  server -> node                       node -> server
    fedavg    lora_A, lora_B                       lora_A, lora_B
    ffa       lora_B (A is the bundle's, seeded)   lora_B
    fedex     lora_A, lora_B, base deltas          lora_A, lora_B

Arrays use PEFT's layout (A (r, in), B (out, r), deltas (out, in)) and PEFT's keys, so a
Flower `ArrayRecord` holds an adapter as PEFT would save it.
"""

import hashlib
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord

from edgetune.common.errors import BundleError
from edgetune.common.peft import bundle_adapter_keys, bundle_delta_keys

ARRAYS = "arrays"  # the RecordDict keys Flower's strategies use
CONFIG = "config"
METRICS = "metrics"
BASE_SHA = "base-sha256"  # the server's base-model hash, sent with every round's config
KEYS_SHA = "keys-sha256"  # SecAgg+ rounds: the hash of the arrays' order (legacy Parameters carry no names)
CLIP_RANGE = "secagg-clip-range"  # SecAgg+ rounds: the quantizer's range, checked by each node
MAX_EXAMPLES = "secagg-max-examples"


def uploaded_keys(strategy: str, manifest: dict) -> list[str]:
    """The keys a node sends back: only lora_B under ffa, A and B otherwise."""
    keys = bundle_adapter_keys(manifest)
    return [k for k in keys if k.endswith(".lora_B.weight")] if strategy == "ffa" else keys


def sent_keys(strategy: str, manifest: dict) -> list[str]:
    """The keys the server sends: what the nodes upload, plus the base deltas under fedex."""
    return uploaded_keys(strategy, manifest) + (bundle_delta_keys(manifest) if strategy == "fedex" else [])


def keys_digest(keys: list[str]) -> str:
    """The sha256 of an ordered key list: what the server and a node must agree on."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """A Flower ArrayRecord of float32 arrays, in the dict's key order."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The numpy arrays of an ArrayRecord, by key."""
    return {k: record[k].numpy() for k in record}


def record_bytes(record: ArrayRecord) -> int:
    """The bytes of a record's arrays as Flower ships them (.npy: the data and a 128-byte header each)."""
    return sum(len(record[k].data) for k in record)


def check_strategy_fits(strategy: str, manifest: dict, bundle: Path) -> None:
    """Refuse a bundle the strategy cannot run on, saying how to build one that fits."""
    if strategy == "ffa" and manifest.get("trainable") != "lora_B":
        raise BundleError(f"{bundle}: ffa needs a bundle where only lora_B trains (edgetune build --trainable lora_B)")
    if strategy == "fedex" and not manifest.get("base_delta"):
        raise BundleError(f"{bundle}: fedex needs a bundle with updatable base deltas (edgetune build --base-delta)")
