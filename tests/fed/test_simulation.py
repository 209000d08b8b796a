"""A fleet on one machine through Flower's Message API: every strategy, a refused node, DP clipping."""

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from edgetune.common.manifest import read_manifest
from edgetune.common.peft import load_adapter
from edgetune.fed.client_app import KEY_CLIPPING_NORM
from edgetune.fed.client_app import app as client_app
from edgetune.fed.config import FleetConfig
from edgetune.fed.payload import BASE_SHA, from_record, sent_keys, to_record
from edgetune.fed.server_app import run_fleet
from edgetune.fed.simulation import SequentialGrid, simulate
from edgetune.runtime.bundle_checkpoint import bundle_adapter
from tests.fed.conftest import STRATEGY_BUNDLE


def _config(bundle, out, **kwargs) -> FleetConfig:
    settings = dict(clients=2, rounds=2, local_steps=2, lr=1e-2, batch_size=4, seq_len=48, eval_limit=2)
    return FleetConfig(bundle, out, **{**settings, **kwargs})


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("strategy", ["fedavg", "ffa", "fedex"])
def test_every_strategy_runs_rounds_and_writes_the_global_adapter(strategy, fleet_bundle, date_parts, tmp_path):
    bundle = fleet_bundle(STRATEGY_BUNDLE[strategy])
    manifest = read_manifest(bundle)
    config = _config(bundle, tmp_path / "fleet", strategy=strategy, eval_data=date_parts / "heldout.jsonl")
    summary = simulate(config, date_parts)
    records = _records(tmp_path / "fleet")
    assert [r["round"] for r in records] == [0, 1, 2] and summary["rounds"] == 2
    assert all(r["clients"] == 2 and np.isfinite(r["eval_loss"]) and "exact_match" in r for r in records[1:])
    assert records[2]["eval_loss"] < records[0]["eval_loss"]
    weights, _ = load_adapter(tmp_path / "fleet" / "adapter", manifest)  # PEFT format, fits the bundle
    initial = bundle_adapter(bundle, manifest)
    a_keys = [k for k in weights if ".lora_A." in k]
    b_keys = [k for k in weights if ".lora_B." in k]
    uploaded = [weights[k].nbytes for k in (b_keys if strategy == "ffa" else a_keys + b_keys)]
    npy_headers = 128 * len(uploaded)  # Flower ships each Array as .npy bytes
    assert records[1]["upload_bytes_per_client"] == sum(uploaded) + npy_headers
    if strategy == "ffa":  # A never moves: the bundle's seeded A
        assert all(np.array_equal(weights[k], initial[k]) for k in a_keys)
    if strategy == "fedex":
        assert (tmp_path / "fleet" / "adapter" / "base_delta.safetensors").is_file()
        assert records[1]["download_bytes"] > records[1]["upload_bytes_per_client"]  # the deltas travel down
    assert (tmp_path / "fleet" / "summary.json").is_file()


def test_a_strategy_refuses_a_bundle_that_cannot_run_it(fleet_bundle, date_parts, tmp_path):
    with pytest.raises(Exception, match="--trainable lora_B"):
        simulate(_config(fleet_bundle("lora"), tmp_path / "a", strategy="ffa"), date_parts)
    with pytest.raises(Exception, match="--base-delta"):
        simulate(_config(fleet_bundle("lora"), tmp_path / "b", strategy="fedex"), date_parts)


@pytest.fixture
def server_identity():
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _train_message(bundle, base_sha: str, extra: dict | None = None) -> tuple[Message, dict]:
    manifest = read_manifest(bundle)
    sent = {k: v for k, v in bundle_adapter(bundle, manifest).items() if k in sent_keys("fedavg", manifest)}
    config = {"strategy": "fedavg", "local_steps": 3, "lr": 1e-2, "batch_size": 4, "seq_len": 48, "seed": 0}
    config |= {BASE_SHA: base_sha, "server-round": 1, **(extra or {})}
    message = Message(RecordDict({"arrays": to_record(sent), "config": ConfigRecord(config)}), 2, "train")
    message.metadata.__dict__["_message_id"] = "m1"
    return message, sent


def test_a_node_whose_base_model_differs_is_refused_clearly(server_identity, fleet_bundle, date_parts, tmp_path):
    server = fleet_bundle("lora")
    other = fleet_bundle("lora", arch="qwen2")  # another base model: another weights sha256
    message, _ = _train_message(server, read_manifest(server)["source"]["weights_sha256"])
    context = Context(1, 2, {"bundle": str(other), "data": str(date_parts / "client-00.jsonl")}, RecordDict(), {})
    reply = client_app(message, context)
    assert reply.has_error()
    assert "built from another base model" in reply.error.reason and str(other) in reply.error.reason

    # In a fleet: the round goes on with the node that fits (min-clients 1), the other is refused.
    contexts = {
        1: Context(1, 1, {"bundle": str(server), "data": str(date_parts / "client-00.jsonl")}, RecordDict(), {}),
        2: context,
    }
    run_fleet(SequentialGrid(contexts), _config(server, tmp_path / "fleet", rounds=1))
    assert _records(tmp_path / "fleet")[1]["clients"] == 1


def _update_norm(reply: Message, sent: dict) -> float:
    arrays = from_record(next(iter(reply.content.array_records.values())))
    return float(np.sqrt(sum(np.sum((arrays[k].astype(np.float64) - sent[k]) ** 2) for k in sent)))


def test_dp_clipping_bounds_each_update_norm(server_identity, fleet_bundle, date_parts):
    bundle = fleet_bundle("lora")
    sha = read_manifest(bundle)["source"]["weights_sha256"]
    context = Context(1, 2, {"bundle": str(bundle), "data": str(date_parts / "client-00.jsonl")}, RecordDict(), {})
    message, sent = _train_message(bundle, sha)
    free = _update_norm(client_app(message, context), sent)
    clip = free / 10
    message, sent = _train_message(bundle, sha, {KEY_CLIPPING_NORM: clip})
    clipped = _update_norm(client_app(message, context), sent)
    print(f"update norm {free:.4g} unclipped, {clipped:.4g} clipped at {clip:.4g}")
    assert clipped <= clip * (1 + 1e-5)
    assert free > clip


def test_dp_fleet_reports_epsilon(fleet_bundle, date_parts, tmp_path):
    config = _config(fleet_bundle("lora"), tmp_path / "fleet", rounds=2, dp_clip=0.05, dp_noise=1.0)
    simulate(config, date_parts)
    records = _records(tmp_path / "fleet")
    assert records[1]["epsilon"] > 0 and records[2]["epsilon"] > records[1]["epsilon"]  # ε grows with releases
    assert records[1]["delta"] == 1e-5
