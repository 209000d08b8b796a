"""The fleet's ClientApp under SecAgg+: Flower's `secaggplus_mod` around the same local round, torch-free.

SecAgg+ runs on Flower's legacy API (`fed.secagg_server`), so this app is the legacy shape
Flower documents for it: `ClientApp(client_fn=..., mods=[..., secaggplus_mod])` with a
`NumPyClient` whose `fit` trains with `fed.local.train_round`, as the Message API app does.
The mod answers the protocol's four stages; only the masked-vector stage calls `fit`, and of
the adapter only the masked, quantized vector leaves the node (its example count and train
loss travel in clear, as FedAvg's weights must). A node refuses (an error reply) when its
base model or adapter layout is not the server's, or when its upload would not fit the
round's quantization range (values beyond ±clip range, more examples than max examples),
which Flower's quantizer would otherwise clip without a word.
"""

import numpy as np
from flwr.app import Context, Message
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from edgetune.common.errors import BundleError, DataError, EdgetuneError
from edgetune.fed.client_app import node_paths
from edgetune.fed.local import check_base, train_round
from edgetune.fed.payload import BASE_SHA, CLIP_RANGE, KEYS_SHA, MAX_EXAMPLES, keys_digest, sent_keys

FIT_METRICS = "fitres.metrics"  # where Flower's legacy FitRes keeps its metrics


class FleetNode(NumPyClient):
    """One node: its bundle and data from the node config."""

    def __init__(self, context: Context):
        self.bundle, self.data = node_paths(context.node_config)

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        """Train from the global arrays (in the server's key order); return the update, examples and metrics."""
        manifest = check_base(self.bundle, str(config[BASE_SHA]))
        strategy = str(config["strategy"])
        keys = sent_keys(strategy, manifest)
        if keys_digest(keys) != config[KEYS_SHA] or len(keys) != len(parameters):
            raise BundleError(f"{self.bundle}: this node's adapter layout (targets, rank) is not the server's")
        settings = {k: config[k] for k in ("local_steps", "lr", "batch_size", "seq_len")}
        settings["seed"] = int(config["seed"]) + 1000 * int(config["server-round"])
        received = dict(zip(keys, parameters, strict=True))
        result = train_round(self.bundle, self.data, received, strategy, settings, manifest)
        upload = [result.arrays[k] for k in keys]
        _check_fits(upload, result.examples, float(config[CLIP_RANGE]), int(config[MAX_EXAMPLES]), self.data)
        metrics = {"train-loss": result.train_loss, "train-seconds": result.train_s}
        return upload, result.examples, metrics


def _check_fits(upload: list[np.ndarray], examples: int, clip_range: float, max_examples: int, data) -> None:
    """Refuse an upload that Flower's quantizer would clip (its weight examples/max_examples is at most 1)."""
    if examples > max_examples:
        raise DataError(f"{data}: {examples} examples, more than the fleet's --secagg-max-examples {max_examples}")
    largest = max(float(np.abs(a).max()) for a in upload)
    if largest > clip_range:
        raise EdgetuneError(
            f"{data}: the adapter trained on it has a value of magnitude {largest:.4g}, "
            f"beyond the fleet's --secagg-clip-range {clip_range:g}"
        )


def count_masked_upload(msg: Message, context: Context, call_next) -> Message:
    """Report the bytes of the masked vector the node uploads (what SecAgg+ sends instead of the arrays)."""
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    protocol = reply.content.config_records.get(RECORD_KEY_CONFIGS)
    if protocol is not None and Key.MASKED_PARAMETERS in protocol:
        metrics = reply.content.config_records[FIT_METRICS]
        metrics["upload-bytes"] = sum(len(b) for b in protocol[Key.MASKED_PARAMETERS])
    return reply


def node(context: Context):
    """Flower's client_fn: this node as a legacy Client."""
    return FleetNode(context).to_client()


app = ClientApp(client_fn=node, mods=[count_masked_upload, secaggplus_mod])
