"""Session fixtures: tiny HF model folders and their bundles, built once per run."""

from pathlib import Path

import pytest

from edgetune.common.embedded import smollm2_gguf
from tests.tiny_models import ALL_ARCHS, make_model_dir

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
    """tiny_bundle(arch, targets=None, **lora) -> a bundle folder built from the tiny model (lora: rank, alpha, ...)."""
    from edgetune.builder.pipeline import build_bundle
    from edgetune.options import BuildConfig

    def get(arch: str, targets: str | None = "all-linear", optimizer: str = "adamw", **lora) -> Path:
        key = ("bundle", arch, targets, optimizer, tuple(sorted(lora.items())))
        if key not in _cache:
            out = tmp_path_factory.mktemp(f"bundle_{arch}") / "bundle"
            build_bundle(BuildConfig(str(tiny_model_dir(arch)), out, targets=targets, optimizer=optimizer, **lora))
            _cache[key] = out
        return _cache[key]

    return get


def pytest_report_header(config):
    return f"tiny architectures: {', '.join(ALL_ARCHS)}"


@pytest.fixture(scope="session")
def smollm2_bundle(tmp_path_factory):
    """The real SmolLM2-135M-Instruct built once per run (about 80 s)."""
    from edgetune.builder.pipeline import build_bundle
    from edgetune.options import BuildConfig

    out = tmp_path_factory.mktemp("smollm2") / "bundle"
    build_bundle(BuildConfig(str(smollm2_gguf()), out))
    return out


@pytest.fixture(scope="session")
def encoder_model_dir(tmp_path_factory):
    """encoder_model_dir(arch) -> a saved tiny random encoder (no task head) with its tokenizer."""
    from tests.tiny_encoders import make_encoder_dir

    def get(arch: str):
        key = ("encoder-model", arch)
        if key not in _cache:
            _cache[key] = make_encoder_dir(arch, tmp_path_factory.mktemp(f"encoder_{arch}"))
        return _cache[key]

    return get


ENCODER_LABELS = {"text-classification": "neg,pos,mixed", "token-classification": "O,B-PER,I-PER,B-LOC,I-LOC"}


@pytest.fixture(scope="session")
def encoder_bundle(tmp_path_factory, encoder_model_dir):
    """encoder_bundle(arch, task, method="lora", targets="all-linear", **kwargs) -> a bundle folder."""
    from edgetune.builder.pipeline import build_bundle
    from edgetune.options import BuildConfig

    def get(arch: str, task: str, method: str = "lora", targets: str | None = "all-linear", **kwargs):
        key = ("encoder", arch, task, method, targets, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key not in _cache:
            out = tmp_path_factory.mktemp(f"{arch}_{task}") / "bundle"
            config = BuildConfig(
                str(encoder_model_dir(arch)),
                out,
                task=task,
                labels=ENCODER_LABELS.get(task),
                targets=targets,
                method=method,
                **kwargs,
            )
            build_bundle(config)
            _cache[key] = out
        return _cache[key]

    return get
