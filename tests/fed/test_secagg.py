"""SecAgg+ through Flower's own workflow and mod: fedavg and ffa over 3 clients give the global
adapter of the same run without SecAgg+, within the quantization error; fedex and DP are refused.

Flower quantizes each node's weighted values to integers before masking them (clipping range C,
quantization range T = 2**22, weight examples/max_examples W); one round's average is off by at
most 2·C·W / (T·mean examples) per value (`secagg_server.error_bound`), plus float32 rounding.
Here C = 0.5 and W = 64 for parts of 48 examples: 3.2e-7, on values up to 0.13.
"""

import json

import numpy as np
import psutil
import pytest
from flwr.app import Context, RecordDict

from edgetune.common.errors import ConfigError, EdgetuneError
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import load_adapter
from edgetune.fed.config import FleetConfig
from edgetune.fed.flower_app import write_app
from edgetune.fed.payload import BASE_SHA, CLIP_RANGE, KEYS_SHA, MAX_EXAMPLES, keys_digest, sent_keys
from edgetune.fed.secagg_client import FleetNode
from edgetune.fed.secagg_server import error_bound
from edgetune.fed.simulation import simulate
from edgetune.runtime.bundle_checkpoint import bundle_adapter
from tests.fed.conftest import STRATEGY_BUNDLE
from tests.fed.fleet import LocalFleet

EXAMPLES = 48  # per client part (conftest's date_parts)
FLOAT32_SLACK = 1e-7  # both results are float32 (values <= 0.2: half an ulp is 7.5e-9) and Flower's weights are rounded
# After a 2nd round of local training from globals 3e-7 apart: measured 8e-6 to 4.2e-5 in 12 pairs of runs (two runs
# without SecAgg+ differ by up to 6e-6: ORT's threaded sums); 1% of one round's update (about 2e-2 here).
ROUNDS_TOLERANCE = 2e-4


def _config(bundle, out, **kwargs) -> FleetConfig:
    settings = dict(clients=3, rounds=1, local_steps=2, lr=1e-2, batch_size=4, seq_len=48, eval_limit=0)
    settings |= dict(secagg_clip_range=0.5, secagg_max_examples=64)
    return FleetConfig(bundle, out, **{**settings, **kwargs})


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _plain_and_secure(strategy: str, rounds: int, fleet_bundle, date_parts, tmp_path):
    """The global adapters of one run without and one with SecAgg+, and the SecAgg+ run's records."""
    bundle = fleet_bundle(STRATEGY_BUNDLE[strategy])
    adapters = []
    for secagg in (False, True):
        out = tmp_path / ("secagg" if secagg else "plain")
        simulate(_config(bundle, out, strategy=strategy, rounds=rounds, secagg=secagg), date_parts)
        adapters.append(load_adapter(out / "adapter", read_manifest(bundle))[0])
    return adapters, _records(tmp_path / "secagg")


def _max_difference(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)


@pytest.mark.parametrize("strategy", ["fedavg", "ffa"])
def test_a_secagg_round_is_the_plain_average_within_the_quantization_error(
    strategy, fleet_bundle, date_parts, tmp_path
):
    (plain, secure), records = _plain_and_secure(strategy, 1, fleet_bundle, date_parts, tmp_path)
    bound = error_bound(_config(None, tmp_path), EXAMPLES)
    difference = _max_difference(plain, secure)
    print(f"{strategy}, 1 round: max |plain - SecAgg+| {difference:.3g}, Flower's quantization bound {bound:.3g}")
    assert difference <= bound + FLOAT32_SLACK
    assert records[1]["clients"] == 3
    # What a node uploaded is Flower's masked vector: int64 values (the weight, then every sent value), as .npy.
    manifest = read_manifest(fleet_bundle(STRATEGY_BUNDLE[strategy]))
    keys = sent_keys(strategy, manifest)
    values = sum(plain[k].size for k in keys)
    assert records[1]["upload_bytes_per_client"] == 8 * (1 + values) + 128 * (1 + len(keys))


@pytest.mark.parametrize("strategy", ["fedavg", "ffa"])
def test_secagg_rounds_follow_the_plain_run(strategy, fleet_bundle, date_parts, tmp_path):
    (plain, secure), records = _plain_and_secure(strategy, 2, fleet_bundle, date_parts, tmp_path)
    difference = _max_difference(plain, secure)
    print(f"{strategy}, 2 rounds: max |plain - SecAgg+| {difference:.3g}")
    assert [r["clients"] for r in records[1:]] == [3, 3]
    assert difference <= ROUNDS_TOLERANCE


def test_a_node_that_drops_out_of_a_secagg_round_leaves_the_others_average(date_parts, fleet_bundle, tmp_path):
    """The third node has more examples than --secagg-max-examples and refuses after the key exchange: Flower
    rebuilds its masks from the others' shares, and the round is the 2 other nodes' average."""
    parts = tmp_path / "parts"
    parts.mkdir()
    for name in ("client-00.jsonl", "client-01.jsonl"):
        (parts / name).write_text((date_parts / name).read_text())
    (parts / "client-02.jsonl").write_text("".join((date_parts / f"client-0{i}.jsonl").read_text() for i in range(3)))
    bundle = fleet_bundle("lora")
    simulate(_config(bundle, tmp_path / "two", clients=2), parts)
    simulate(_config(bundle, tmp_path / "secagg", secagg=True, min_clients=2), parts)
    assert _records(tmp_path / "secagg")[1]["clients"] == 2
    manifest = read_manifest(bundle)
    two, secure = (load_adapter(tmp_path / name / "adapter", manifest)[0] for name in ("two", "secagg"))
    difference = _max_difference(two, secure)
    print(f"2 of 3 nodes, 1 round: max |plain - SecAgg+| {difference:.3g}")
    assert difference <= error_bound(_config(None, tmp_path), EXAMPLES) + FLOAT32_SLACK


def test_secagg_refuses_fedex_dp_and_values_beyond_its_range(fleet_bundle, date_parts, tmp_path):
    bundle = fleet_bundle("fedex")
    with pytest.raises(ConfigError, match="fedex cannot run with SecAgg"):
        _config(bundle, tmp_path, strategy="fedex", secagg=True)
    with pytest.raises(ConfigError, match="cannot run with differential privacy"):
        _config(bundle, tmp_path, secagg=True, dp_clip=0.1, dp_noise=1.0)
    with pytest.raises(ConfigError, match="at least 3 clients"):
        _config(bundle, tmp_path, secagg=True, clients=2)
    # A range the adapter does not fit in: every node refuses rather than let Flower clip its values.
    lora = fleet_bundle("lora")
    out = tmp_path / "narrow"
    simulate(_config(lora, out, secagg=True, secagg_clip_range=0.01), date_parts)
    assert _records(out)[1]["clients"] == 0
    manifest = read_manifest(lora)
    keys = sent_keys("fedavg", manifest)
    config = {"strategy": "fedavg", "local_steps": 1, "lr": 1e-2, "batch_size": 4, "seq_len": 48, "seed": 0}
    config |= {"server-round": 1, BASE_SHA: manifest["source"]["weights_sha256"], KEYS_SHA: keys_digest(keys)}
    config |= {CLIP_RANGE: 0.01, MAX_EXAMPLES: 64}
    node = FleetNode(
        Context(1, 2, {"bundle": str(lora), "data": str(date_parts / "client-00.jsonl")}, RecordDict(), {})
    )
    initial = bundle_adapter(lora, manifest)
    with pytest.raises(EdgetuneError, match=r"client-00.jsonl: the adapter .* magnitude 0\.1\d*, beyond .* 0\.01$"):
        node.fit([initial[k] for k in keys], config)
    with pytest.raises(EdgetuneError, match="48 examples, more than the fleet's --secagg-max-examples 40"):
        node.fit([initial[k] for k in keys], config | {CLIP_RANGE: 1.0, MAX_EXAMPLES: 40})


@pytest.mark.slow
def test_secagg_on_the_deployment_engine(fleet_bundle, date_parts, tmp_path):
    """A real flower-superlink, 3 flower-supernode processes and `flwr run` of a SecAgg+ app: one round gives the
    plain simulated round's adapter within the quantization error; every process is stopped by PID."""
    bundle = fleet_bundle("lora")
    simulate(_config(bundle, tmp_path / "plain"), date_parts)
    out = tmp_path / "server"
    write_app(tmp_path / "app", _config(bundle, out, secagg=True, round_timeout=600.0))
    with LocalFleet(tmp_path) as fleet:
        for i in range(3):
            fleet.add_node(f"node{i}", bundle, date_parts / f"client-0{i}.jsonl")
        returncode = fleet.run(tmp_path / "app", timeout=900)
        assert returncode == 0, fleet.log("superlink")[-3000:]
    alive = [p for p in fleet.known if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert fleet.known and not alive, f"still running: {alive}"
    assert "edgetune.fed.secagg_client:app" in (tmp_path / "app" / "pyproject.toml").read_text()
    assert [r["clients"] for r in _records(out)[1:]] == [3]
    manifest = read_manifest(bundle)
    plain = load_adapter(tmp_path / "plain" / "adapter", manifest)[0]
    difference = _max_difference(plain, load_adapter(out / "adapter", manifest)[0])
    record = _records(out)[1]
    print(f"deployment, 1 round: max |plain - SecAgg+| {difference:.3g}, round {record['round_s']:.1f} s")
    assert difference <= error_bound(_config(None, tmp_path), EXAMPLES) + FLOAT32_SLACK
