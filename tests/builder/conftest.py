"""Bundles built with a method (lora, dora, qlora) or from a PEFT adapter, cached per session."""

import pytest

_cache: dict = {}


@pytest.fixture(scope="session")
def method_bundle(tmp_path_factory, tiny_model_dir):
    """method_bundle(arch, method, targets="all-linear", **kwargs) -> a bundle folder.

    kwargs are BuildConfig's (quant, block_size, rank, alpha, dropout, use_rslora, ...).
    """
    from edgetune.builder.pipeline import build_bundle
    from edgetune.options import BuildConfig

    def get(arch: str, method: str = "lora", targets: str | None = "all-linear", **kwargs):
        key = (arch, method, targets, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key not in _cache:
            out = tmp_path_factory.mktemp(f"{method}_{arch}") / "bundle"
            build_bundle(BuildConfig(str(tiny_model_dir(arch)), out, targets=targets, method=method, **kwargs))
            _cache[key] = out
        return _cache[key]

    return get


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
