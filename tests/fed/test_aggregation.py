"""LoRA aggregation: ffa and fedex reproduce the weighted average of the clients' B·A; fedavg does not."""

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from edgetune.common.peft import delta_key, lora_keys
from edgetune.fed.aggregation import Update, add_deltas, effective_update, fedex_residual, weighted_average
from edgetune.fed.payload import from_record, to_record
from edgetune.fed.strategies import FedEx

MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
SHAPES = {MODULES[0]: (64, 48), MODULES[1]: (32, 48)}  # (out, in)
RANK, SCALE = 8, 2.0
EXAMPLES = [10, 30, 60]


def _clients(seed: int, shared_a: bool) -> list[Update]:
    """Three clients' adapters (PEFT layout), A shared (FFA) or not."""
    rng = np.random.default_rng(seed)
    a_shared = {m: rng.normal(size=(RANK, SHAPES[m][1])).astype(np.float32) for m in MODULES}
    updates = []
    for n in EXAMPLES:
        arrays = {}
        for m in MODULES:
            key_a, key_b = lora_keys(m)
            arrays[key_a] = a_shared[m] if shared_a else rng.normal(size=(RANK, SHAPES[m][1])).astype(np.float32)
            arrays[key_b] = rng.normal(size=(SHAPES[m][0], RANK)).astype(np.float32)
        updates.append(Update(arrays, n))
    return updates


def _target(updates: list[Update]) -> dict:
    """Σ wᵢ·s·Bᵢ·Aᵢ per module, float64."""
    weights = np.array(EXAMPLES, np.float64) / sum(EXAMPLES)
    return {m: sum(w * effective_update(u.arrays, {}, SCALE)[m] for w, u in zip(weights, updates)) for m in MODULES}


def _max_error(result: dict, target: dict) -> float:
    return max(float(np.abs(result[m] - target[m]).max()) for m in MODULES)


def test_ffa_is_exact():
    updates = _clients(0, shared_a=True)
    average = weighted_average(updates)
    assert _max_error(effective_update(average, {}, SCALE), _target(updates)) <= 1e-6


def test_fedex_is_exact_and_fedavg_is_not():
    updates = _clients(1, shared_a=False)
    average = weighted_average(updates)
    target = _target(updates)
    fedavg_error = _max_error(effective_update(average, {}, SCALE), target)
    delta = add_deltas({}, fedex_residual(updates, average, SCALE))
    fedex_error = _max_error(effective_update(average, delta, SCALE), target)
    print(f"max |ΔW − Σwᵢ·s·Bᵢ·Aᵢ|: fedavg {fedavg_error:.3g}, fedex {fedex_error:.3g}")
    assert fedex_error <= 1e-6
    assert fedavg_error > 1e-2


def test_fedex_accumulates_over_rounds():
    previous = {delta_key(m): np.full(SHAPES[m], 0.25, np.float32) for m in MODULES}
    updates = _clients(2, shared_a=False)
    average = weighted_average(updates)
    delta = add_deltas(previous, fedex_residual(updates, average, SCALE))
    target = {m: t + 0.25 for m, t in _target(updates).items()}  # clients all started from W + previous
    assert _max_error(effective_update(average, delta, SCALE), target) <= 1e-6


@pytest.fixture
def server_identity():
    """Messages need the identity of the process that sends them (a ServerApp's)."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def test_flower_fedex_strategy_is_exact(server_identity):
    """Through Flower's FedAvg (its float32 average) and the FedEx strategy, with Messages as replies."""
    updates = _clients(3, shared_a=False)
    deltas = {delta_key(m): np.zeros(SHAPES[m], np.float32) for m in MODULES}
    strategy = FedEx(SCALE, deltas, min_replies=2, min_train_nodes=2, min_available_nodes=3)
    replies = []
    for node, update in enumerate(updates, start=2):
        sent = Message(RecordDict({}), node, "train")
        sent.metadata.__dict__["_message_id"] = f"m{node}"
        content = RecordDict(
            {"arrays": to_record(update.arrays), "metrics": MetricRecord({"num-examples": update.examples})}
        )
        replies.append(Message(content, reply_to=sent))
    record, _ = strategy.aggregate_train(1, replies)
    arrays = from_record(record)
    adapter = {k: v for k, v in arrays.items() if k not in deltas}
    delta = {k: v for k, v in arrays.items() if k in deltas}
    assert set(delta) == set(deltas)
    assert _max_error(effective_update(adapter, delta, SCALE), _target(updates)) <= 1e-6
