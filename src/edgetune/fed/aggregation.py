"""LoRA aggregation over the clients' adapters, as numpy arrays keyed by PEFT names.

Averaging `lora_A` and `lora_B` separately is not averaging the updates: with clients'
(Aᵢ, Bᵢ) and weights wᵢ (their example counts, normalised),

    Σ wᵢ·Bᵢ·Aᵢ  ≠  B̄·Ā   where Ā = Σ wᵢ·Aᵢ, B̄ = Σ wᵢ·Bᵢ.

    fedavg  Ā, B̄ (Flower's FedAvg, FlowerTune's baseline): not exact.
    ffa     FFA-LoRA: A is frozen from the bundle's shared seed and only B is trained,
            sent and averaged; Σ wᵢ·Bᵢ·A = B̄·A exactly, and the upload is halved.
    fedex   FedEx-LoRA: Ā, B̄ plus the residual s·(Σ wᵢ·Bᵢ·Aᵢ − B̄·Ā) folded into a
            per-layer delta on the frozen base weight, which the devices add to W
            (bundles built with `base_delta`); W + Δ + s·B̄·Ā is exact.

Sums run in float64 and are stored as float32. Adapters use PEFT's layout: A (r, in),
B (out, r); a delta is (out, in), like the base layer's weight in PEFT.
"""

from dataclasses import dataclass

import numpy as np

from edgetune.common.errors import EdgetuneError
from edgetune.common.peft import PEFT_PREFIX, delta_key, lora_keys

STRATEGIES = ("fedavg", "ffa", "fedex")


@dataclass(frozen=True)
class Update:
    """One client's reply: its adapter tensors (PEFT layout) and how many examples it trained on."""

    arrays: dict[str, np.ndarray]
    examples: int


def client_weights(updates: list[Update]) -> np.ndarray:
    """The clients' averaging weights: example counts, normalised to sum to 1."""
    counts = np.array([u.examples for u in updates], np.float64)
    if len(updates) == 0 or counts.min() <= 0:
        raise EdgetuneError(f"aggregation needs replies with examples > 0, got counts {counts.tolist()}")
    return counts / counts.sum()


def weighted_average(updates: list[Update]) -> dict[str, np.ndarray]:
    """Σ wᵢ·xᵢ for every key the clients share (they must all send the same keys and shapes)."""
    weights = client_weights(updates)
    keys = set(updates[0].arrays)
    for u in updates[1:]:
        if set(u.arrays) != keys:
            raise EdgetuneError(f"clients sent different adapter keys, e.g. {sorted(set(u.arrays) ^ keys)[0]}")
    average = {}
    for key in sorted(keys):
        total = sum(w * u.arrays[key].astype(np.float64) for w, u in zip(weights, updates))
        average[key] = total.astype(np.float32)
    return average


def modules_of(keys) -> list[str]:
    """The adapted module paths behind a set of `...lora_A.weight` / `...lora_B.weight` keys."""
    suffix = ".lora_B.weight"
    return sorted(k[len(PEFT_PREFIX) : -len(suffix)] for k in keys if k.endswith(suffix))


def fedex_residual(updates: list[Update], average: dict[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    """Per module: s·(Σ wᵢ·Bᵢ·Aᵢ − B̄·Ā), (out, in), keyed by `delta_key(module)`."""
    weights = client_weights(updates)
    residual = {}
    for path in modules_of(average):
        key_a, key_b = lora_keys(path)
        products = sum(
            w * (u.arrays[key_b].astype(np.float64) @ u.arrays[key_a].astype(np.float64))  # (out, r)·(r, in)
            for w, u in zip(weights, updates)
        )
        mean_product = average[key_b].astype(np.float64) @ average[key_a].astype(np.float64)  # (out, in)
        residual[delta_key(path)] = (scale * (products - mean_product)).astype(np.float32)
    return residual


def add_deltas(total: dict[str, np.ndarray], residual: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The accumulated base delta after one more round's residual (float64 sum, float32 result)."""
    return {
        key: (total[key].astype(np.float64) + value if key in total else value.astype(np.float64)).astype(np.float32)
        for key, value in residual.items()
    }


def effective_update(adapter: dict[str, np.ndarray], delta: dict[str, np.ndarray], scale: float) -> dict:
    """What a global state adds to each base weight: Δ + s·B·A per module, (out, in), float64."""
    out = {}
    for path in modules_of(adapter):
        key_a, key_b = lora_keys(path)
        product = scale * (adapter[key_b].astype(np.float64) @ adapter[key_a].astype(np.float64))
        out[path] = product + delta.get(delta_key(path), 0.0)
    return out
