"""Session fixtures: tiny HF model folders and their bundles, built once per run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from real_models import smollm2_gguf  # noqa: E402
from tiny_models import ARCHS, make_model_dir  # noqa: E402

_cache: dict = {}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """tiny_model_dir(arch) -> a saved random HF model folder with tokenizer."""
    def get(arch: str) -> Path:
        key = ("model", arch)
        if key not in _cache:
            _cache[key] = make_model_dir(arch, tmp_path_factory.mktemp(f"hf_{arch}"))
        return _cache[key]
    return get


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_model_dir):
    """tiny_bundle(arch, targets=None, **lora) -> a bundle folder built from the tiny model."""
    from edgetune.build.bundle import build_bundle
    from edgetune.build.lora import LoraSpec

    def get(arch: str, targets: str | None = "all-linear", optimizer: str = "adamw", **lora) -> Path:
        key = ("bundle", arch, targets, optimizer, tuple(sorted(lora.items())))
        if key not in _cache:
            out = tmp_path_factory.mktemp(f"bundle_{arch}") / "bundle"
            build_bundle(str(tiny_model_dir(arch)), out, targets=targets, spec=LoraSpec(**lora), optimizer=optimizer)
            _cache[key] = out
        return _cache[key]
    return get


def pytest_report_header(config):
    return f"tiny architectures: {', '.join(ARCHS)}"


@pytest.fixture(scope="session")
def smollm2_bundle(tmp_path_factory):
    """The real SmolLM2-135M-Instruct built once per run (about 80 s)."""
    from edgetune.build.bundle import build_bundle

    out = tmp_path_factory.mktemp("smollm2") / "bundle"
    build_bundle(str(smollm2_gguf()), out)
    return out
