"""Flower's Deployment Engine on loopback: a real flower-superlink, flower-supernode processes and `flwr run`.

Every process (and those Flower spawned under them) is stopped by PID when the fleet closes.
"""

import json
import subprocess
import time

import psutil
import pytest

from edgetune.common.manifest import read_manifest
from edgetune.common.peft import load_adapter
from edgetune.fed.config import FleetConfig
from edgetune.fed.flower_app import write_app
from tests.fed.fleet import LocalFleet

pytestmark = pytest.mark.slow


def _records(out) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _assert_all_stopped(fleet: LocalFleet) -> None:
    pids = list(fleet.known)
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert pids and not alive, f"still running: {alive}"


def test_superlink_and_two_supernodes_run_two_rounds(fleet_bundle, date_parts, tmp_path):
    bundle = fleet_bundle("lora")
    out = tmp_path / "server"
    config = FleetConfig(bundle, out, clients=2, rounds=2, local_steps=2, lr=1e-2, batch_size=4, seq_len=48)
    write_app(tmp_path / "app", FleetConfig(**{**vars(config), "eval_data": date_parts / "heldout.jsonl"}))
    with LocalFleet(tmp_path) as fleet:
        for i in range(2):
            fleet.add_node(f"node{i}", bundle, date_parts / f"client-0{i}.jsonl")
        returncode = fleet.run(tmp_path / "app", timeout=900)
        assert returncode == 0, fleet.log("superlink")[-3000:]
    _assert_all_stopped(fleet)
    records = _records(out)
    assert [r["round"] for r in records] == [0, 1, 2]
    assert [r["clients"] for r in records[1:]] == [2, 2]
    assert records[2]["eval_loss"] < records[0]["eval_loss"]
    load_adapter(out / "adapter", read_manifest(bundle))


def _wait_for_round(out, n: int, fleet: LocalFleet, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(_records(out)) <= n:
        assert time.monotonic() < deadline, f"round {n} not recorded after {timeout} s"
        assert fleet.procs["flwr-run"].poll() is None, "the run ended early"
        time.sleep(0.5)


def test_a_supernode_killed_mid_round_does_not_stop_the_fleet_and_rejoins(fleet_bundle, date_parts, tmp_path):
    bundle = fleet_bundle("lora")
    out = tmp_path / "server"
    config = FleetConfig(
        bundle,
        out,
        clients=2,
        rounds=3,
        local_steps=8,
        lr=1e-2,
        batch_size=4,
        seq_len=48,
        min_clients=1,
        round_timeout=60.0,
    )
    write_app(tmp_path / "app", config)
    with LocalFleet(tmp_path) as fleet:
        for i in range(2):
            fleet.add_node(f"node{i}", bundle, date_parts / f"client-0{i}.jsonl")
        fleet.start_run(tmp_path / "app")
        _wait_for_round(out, 1, fleet, timeout=600)  # round 1 is written: round 2 has started
        time.sleep(2)
        fleet.kill_node("node1")  # SIGKILL mid-round
        assert len(_records(out)) == 2  # round 2 was still running
        fleet.add_node("node1-again", bundle, date_parts / "client-01.jsonl")  # the device comes back mid-round
        returncode = fleet.wait_run(timeout=900)
        assert returncode == 0, fleet.log("superlink")[-3000:]
    _assert_all_stopped(fleet)
    records = _records(out)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert [r["clients"] for r in records[1:]] == [2, 1, 2]  # round 2 without the killed node; it rejoined for 3


def _certificates(folder) -> dict:
    """A CA and a server certificate for 127.0.0.1, made with openssl (the README's LAN recipe)."""
    folder.mkdir()
    run = lambda *args: subprocess.run(["openssl", *map(str, args)], cwd=folder, check=True, capture_output=True)
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=edgetune-fleet-ca",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    )
    return {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}


def test_a_fleet_over_tls(fleet_bundle, date_parts, tmp_path):
    bundle = fleet_bundle("lora")
    out = tmp_path / "server"
    write_app(tmp_path / "app", FleetConfig(bundle, out, clients=1, rounds=1, local_steps=2, batch_size=4, seq_len=48))
    with LocalFleet(tmp_path, tls=_certificates(tmp_path / "certs")) as fleet:
        fleet.add_node("node0", bundle, date_parts / "client-00.jsonl")
        assert fleet.run(tmp_path / "app", timeout=600) == 0, fleet.log("superlink")[-3000:]
        assert f"https://127.0.0.1:{fleet.port}" in fleet.log("superlink")
    _assert_all_stopped(fleet)
    assert [r["clients"] for r in _records(out)[1:]] == [1]
