"""One node's round: start from the global adapter, train on the local data, return the update.

The only place the fleet calls the runtime's training recipe: the global arrays become
an init-adapter folder (PEFT files, plus base deltas under fedex), `edgetune.runtime.train`
runs `local_steps` optimizer steps on the node's data at a constant learning rate (the
optimizer state starts fresh each round, as in FedAvg), and the run's adapter is read back.
"""

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetune.common.errors import BundleError
from edgetune.common.manifest import read_manifest
from edgetune.common.names import ADAPTER_DIR
from edgetune.common.peft import DELTA_SUFFIX, load_adapter, save_adapter
from edgetune.fed.payload import uploaded_keys
from edgetune.options import TrainConfig
from edgetune.runtime.bundle_checkpoint import bundle_adapter
from edgetune.runtime.train import train


@dataclass(frozen=True)
class LocalResult:
    """A node's reply: the uploaded arrays (PEFT layout), its example count, last loss and time spent."""

    arrays: dict[str, np.ndarray]
    examples: int
    train_loss: float
    train_s: float  # the whole training call: set-up, steps and saving


def check_base(bundle: Path, base_sha256: str) -> dict:
    """The node's bundle manifest, if its base model is the server's (else a one-line refusal)."""
    manifest = read_manifest(bundle)
    ours = manifest["source"]["weights_sha256"]
    if ours != base_sha256:
        raise BundleError(
            f"{bundle}: this node's bundle was built from another base model (weights sha256 {ours[:12]}…, "
            f"the server's is {base_sha256[:12]}…): refusing to train"
        )
    return manifest


def train_round(
    bundle: Path, data: Path, received: dict[str, np.ndarray], strategy: str, settings: dict, manifest: dict
) -> LocalResult:
    """Train `settings["local_steps"]` steps from the `received` global arrays; return the upload.

    settings: local_steps, lr, batch_size, seq_len, seed (this round's data order).
    """
    start = {**bundle_adapter(bundle, manifest), **received}  # ffa: A comes from the bundle
    deltas = {k: v for k, v in start.items() if k.endswith(DELTA_SUFFIX)}
    adapter = {k: v for k, v in start.items() if k not in deltas}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgetune-fed-") as tmp:
        init = Path(tmp) / "global"
        save_adapter(init, adapter, manifest["adapter_config"], manifest["source"]["weights_sha256"], deltas)
        config = TrainConfig(
            bundle,
            data,
            Path(tmp) / "run",
            steps=settings["local_steps"],
            lr=settings["lr"],
            warmup=0,
            schedule="constant",
            batch_size=settings["batch_size"],
            seq_len=settings["seq_len"],
            seed=settings["seed"],
            init_adapter=init,
            progress=False,
        )
        summary = train(config)
        weights, _ = load_adapter(Path(tmp) / "run" / ADAPTER_DIR, manifest)
    upload = {k: weights[k] for k in uploaded_keys(strategy, manifest)}
    return LocalResult(upload, summary["examples"], summary["final_train_loss"], time.perf_counter() - started)
