"""Bundles built with a method (lora, dora, qlora) or from a PEFT adapter, cached per session."""

import pytest

_cache: dict = {}


@pytest.fixture(scope="session")
def method_bundle(tmp_path_factory, tiny_model_dir):
    """method_bundle(arch, method, targets="all-linear", **kwargs) -> a bundle folder.

    kwargs are build_bundle's (quant, block_size, ...) or LoraSpec's (rank, alpha, dropout, use_rslora).
    """
    from edgetune.build.bundle import build_bundle
    from edgetune.build.lora import LoraSpec

    spec_fields = set(LoraSpec.__dataclass_fields__)

    def get(arch: str, method: str = "lora", targets: str | None = "all-linear", **kwargs):
        key = (arch, method, targets, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key not in _cache:
            out = tmp_path_factory.mktemp(f"{method}_{arch}") / "bundle"
            spec = LoraSpec(**{k: v for k, v in kwargs.items() if k in spec_fields})
            build_args = {k: v for k, v in kwargs.items() if k not in spec_fields}
            build_bundle(str(tiny_model_dir(arch)), out, targets=targets, method=method, spec=spec, **build_args)
            _cache[key] = out
        return _cache[key]
    return get
