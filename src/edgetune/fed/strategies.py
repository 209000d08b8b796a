"""The fleet's Flower strategies: FedAvg for fedavg and ffa, FedEx-LoRA on top of it, and DP.

    fedavg, ffa  Flower's FedAvg over what the nodes upload (ffa: only lora_B), plus a
                 minimum number of replies for a round to count (`FleetFedAvg`)
    fedex        FedAvg of A and B, plus the residual folded into the base deltas, which
                 travel with the adapter from then on (`FedEx`)
    DP           Flower's `DifferentialPrivacyClientSideFixedClipping` around plain FedAvg
                 (its accountant requires FedAvg's own aggregation and equal client
                 weights), with Flower's RDP accountant for ε

All strategies sample every connected node (`clients` of them) each round and leave
evaluation to the server (`fed.server_rounds`).
"""

from collections.abc import Callable, Iterable
from logging import WARNING

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from flwr.supercore import log
from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from edgetune.fed.aggregation import Update, add_deltas, fedex_residual
from edgetune.fed.config import FleetConfig
from edgetune.fed.payload import from_record, to_record


class FleetFedAvg(FedAvg):
    """Flower's FedAvg that keeps the global adapter when fewer than `min_replies` nodes answered.

    The first round waits for the whole fleet (`min_available_nodes`); later rounds train
    every node connected at the time, at least `min_train_nodes`, so a lost node does not
    stall the fleet and a node that rejoins is sampled again.
    """

    def __init__(self, min_replies: int, **kwargs):
        super().__init__(**kwargs)
        self.min_replies = min_replies

    def configure_train(self, server_round, arrays, config, grid):
        """FedAvg's messages to every connected node; after the first round, wait for no more than min_train_nodes."""
        messages = super().configure_train(server_round, arrays, config, grid)
        self.min_available_nodes = self.min_train_nodes
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg over the valid replies, or nothing (the global stays) below `min_replies`."""
        replies = list(replies)
        answered = sum(not m.has_error() for m in replies)
        if answered < self.min_replies:
            log(
                WARNING,
                "round %d: %d replies, fewer than min-clients %d: global adapter kept",
                server_round,
                answered,
                self.min_replies,
            )
            return None, None
        return super().aggregate_train(server_round, replies)


class FedEx(FleetFedAvg):
    """FedEx-LoRA: FedAvg of A and B, and s·(Σ wᵢ·Bᵢ·Aᵢ − B̄·Ā) added to the base deltas it sends."""

    def __init__(self, scale: float, deltas: dict, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        self.deltas = deltas  # the accumulated base deltas, PEFT layout (out, in)

    def aggregate_train(self, server_round, replies):
        """The averaged A and B, followed by the updated base deltas."""
        replies = list(replies)
        average, metrics = super().aggregate_train(server_round, replies)
        if average is None:
            return None, metrics
        updates = [
            Update(from_record(next(iter(m.content.array_records.values()))), int(_metrics(m)[self.weighted_by_key]))
            for m in replies
            if not m.has_error()
        ]
        mean = from_record(average)
        self.deltas = add_deltas(self.deltas, fedex_residual(updates, mean, self.scale))
        return to_record(mean | self.deltas), metrics


def _metrics(message: Message) -> MetricRecord:
    """The one MetricRecord of a reply."""
    return next(iter(message.content.metric_records.values()))


def make_strategy(
    config: FleetConfig, clients: int, scale: float, deltas: dict, metrics_fn: Callable
) -> FedAvg | DifferentialPrivacyClientSideFixedClipping:
    """The strategy for `config` over `clients` nodes; `metrics_fn` aggregates the replies' metrics."""
    common = dict(
        fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=clients, train_metrics_aggr_fn=metrics_fn
    )
    if config.dp:
        accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=config.dp_delta,
                population_size=clients,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )
        inner = FedAvg(weighted_by_key="uniform-weight", min_train_nodes=clients, **common)
        return DifferentialPrivacyClientSideFixedClipping(
            inner, config.dp_noise, config.dp_clip, clients, accountant=accountant
        )
    if config.strategy == "fedex":
        return FedEx(scale, deltas, min_replies=config.min_clients, min_train_nodes=config.min_clients, **common)
    return FleetFedAvg(config.min_clients, min_train_nodes=config.min_clients, **common)
