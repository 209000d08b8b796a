"""SecAgg+ rounds for fedavg and ffa: Flower's `SecAggPlusWorkflow`, on Flower's legacy strategy API.

In Flower 1.42 SecAgg+ runs only on the legacy path: a `LegacyContext` holding a
`flwr.server.strategy` strategy, `DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`,
and ClientApps with `secaggplus_mod` (`fed.secagg_client`). Each node multiplies its
adapter by its weight (examples / max_examples), quantizes it to integers, adds pairwise
and private masks, and uploads that; the server sums the masked vectors, removes the masks
with the shares the nodes return, and gets only the weighted average, which Flower's
FedAvg passes on. The same `RoundRecorder` writes the adapter and metrics as in the
Message API rounds.

Legacy `Parameters` carry no names: the arrays travel in `sent_keys(strategy, manifest)`
order on both sides, and each round's config carries a hash of those keys, so a node whose
bundle has another adapter layout refuses instead of mixing tensors up.

Quantization (Flower's `quantize`): each value of weight·x is clipped to ±clip_range and
mapped to [0, QUANTIZATION_RANGE] with stochastic rounding; the sum of N nodes must stay
below MODULUS_RANGE, so with Flower's defaults here up to 1023 nodes per round. One node's
rounding error is below 2·clip_range/QUANTIZATION_RANGE, and dividing the sum by the total
weight Σnᵢ/max_examples bounds the error of each averaged value by
2·clip_range·max_examples / (QUANTIZATION_RANGE·mean examples per node).
"""

from logging import WARNING

from flwr.app import Context, MetricRecord, RecordDict
from flwr.common import Parameters, ndarrays_to_parameters
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server import LegacyContext, ServerConfig, SimpleClientManager
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid
from flwr.supercore import log

from edgetune.fed.config import FleetConfig
from edgetune.fed.payload import CLIP_RANGE, KEYS_SHA, MAX_EXAMPLES, keys_digest, to_record
from edgetune.fed.server_rounds import RoundRecorder

QUANTIZATION_RANGE = 2**22  # Flower's defaults
MODULUS_RANGE = 2**32


def error_bound(config: FleetConfig, mean_examples: float) -> float:
    """The largest quantization error of one averaged value (module docstring)."""
    return 2 * config.secagg_clip_range * config.secagg_max_examples / (QUANTIZATION_RANGE * mean_examples)


class SecAggFedAvg(FedAvg):
    """Flower's legacy FedAvg that keeps the global adapter below `min_replies` and logs each failure.

    The first round waits for the whole fleet (`min_available_clients`); later rounds train
    every node connected at the time, at least `min_fit_clients`.
    """

    def __init__(self, min_replies: int, **kwargs):
        super().__init__(**kwargs)
        self.min_replies = min_replies

    def configure_fit(self, server_round, parameters, client_manager):
        """FedAvg's instructions to every connected node; after round 1, wait for min_fit_clients at most."""
        instructions = super().configure_fit(server_round, parameters, client_manager)
        self.min_available_clients = self.min_fit_clients
        return instructions

    def aggregate_fit(self, server_round, results, failures):
        """FedAvg of the unmasked average, or nothing (the global stays) below `min_replies`."""
        for failure in dict.fromkeys(map(str, failures)):  # Flower lists a node failing the masked stage twice
            log(WARNING, "round %d: a node failed: %s", server_round, failure)
        if len(results) < self.min_replies:
            log(
                WARNING,
                "round %d: %d replies, fewer than min-clients %d: global adapter kept",
                server_round,
                len(results),
                self.min_replies,
            )
            return None, {}
        return super().aggregate_fit(server_round, results, failures)


def run_secagg_rounds(
    grid: Grid, config: FleetConfig, keys: list[str], start: dict, recorder: RoundRecorder, fit_config: dict
) -> None:
    """`config.rounds` SecAgg+ rounds from the `start` arrays (ordered by `keys`), recorded by `recorder`."""

    def evaluate(server_round: int, arrays: list, _config: dict) -> None:
        recorder.after_round(server_round, to_record(dict(zip(keys, arrays, strict=True))))

    def metrics(results: list[tuple[int, dict]]) -> dict:
        records = [RecordDict({"metrics": MetricRecord({**m, "num-examples": n})}) for n, m in results]
        return dict(recorder.aggregate_metrics(records, "num-examples"))

    round_config = {**fit_config, KEYS_SHA: keys_digest(keys), CLIP_RANGE: float(config.secagg_clip_range)}
    round_config[MAX_EXAMPLES] = config.secagg_max_examples
    strategy = SecAggFedAvg(
        config.min_clients,
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=config.min_clients,
        min_available_clients=config.clients,
        evaluate_fn=evaluate,
        on_fit_config_fn=lambda server_round: {**round_config, "server-round": server_round},
        fit_metrics_aggregation_fn=metrics,
        initial_parameters=_parameters([start[k] for k in keys]),
    )
    context = LegacyContext(
        Context(grid.run.run_id, SUPERLINK_NODE_ID, {}, RecordDict(), {}),
        config=ServerConfig(num_rounds=config.rounds, round_timeout=config.round_timeout),
        strategy=strategy,
        client_manager=SimpleClientManager(),
    )
    secagg = SecAggPlusWorkflow(
        num_shares=1.0,  # every node of the round holds a share of every other's keys
        reconstruction_threshold=float(config.secagg_threshold),
        max_weight=float(config.secagg_max_examples),
        clipping_range=float(config.secagg_clip_range),
        quantization_range=QUANTIZATION_RANGE,
        modulus_range=MODULUS_RANGE,
        timeout=config.round_timeout,
    )
    DefaultWorkflow(fit_workflow=secagg)(grid, context)


def _parameters(arrays: list) -> Parameters:
    """Legacy Parameters of float32 arrays."""
    return ndarrays_to_parameters([a.astype("float32") for a in arrays])
