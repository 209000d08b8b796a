"""Tiny bundles with random adapters, and live servers over them."""

from pathlib import Path

import pytest

from edgetune.common.manifest import read_manifest
from edgetune.common.peft import save_adapter
from tests.parity import random_adapter
from tests.serve.live import LiveServer
from tests.tiny_models import make_model_dir

ADAPTERS = ("alpha", "beta", "gamma")


def make_adapter(bundle: Path, folder: Path, seed: int, base_sha: str | None = None) -> Path:
    """A random PEFT adapter for `bundle` saved in `folder` (base_sha: claim another base model)."""
    manifest = read_manifest(bundle)
    weights = random_adapter(bundle, seed=seed, scale=0.5)
    save_adapter(folder, weights, manifest["adapter_config"], base_sha or manifest["source"]["weights_sha256"])
    return folder


@pytest.fixture(scope="session")
def served(tiny_bundle, tmp_path_factory):
    """(bundle, adapters_dir): the tiny llama bundle and three adapters under adapters_dir."""
    bundle = tiny_bundle("llama")
    adapters_dir = tmp_path_factory.mktemp("adapters")
    for i, name in enumerate(ADAPTERS):
        make_adapter(bundle, adapters_dir / name, seed=20 + i)
    return bundle, adapters_dir


@pytest.fixture(scope="session")
def long_bundle(tmp_path_factory):
    """The tiny llama with a 4096-token context: 4000 greedy tokens take about 1.6 s to decode on an
    idle machine (the 256-token context takes 60 ms), so a client can hang up in the middle."""
    from edgetune.builder.pipeline import build_bundle
    from edgetune.options import BuildConfig

    folder = tmp_path_factory.mktemp("long_context")
    model = make_model_dir("llama", folder / "hf", max_position_embeddings=4096)
    build_bundle(BuildConfig(str(model), folder / "bundle", targets="all-linear"))
    return folder / "bundle"


@pytest.fixture
def live(tmp_path):
    """live(*args) -> a started LiveServer, stopped (by PID) after the test."""
    servers: list[LiveServer] = []

    def start(*args, env=None, preexec_fn=None) -> LiveServer:
        server = LiveServer(*args, log_dir=tmp_path, env=env, preexec_fn=preexec_fn)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
