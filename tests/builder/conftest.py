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
