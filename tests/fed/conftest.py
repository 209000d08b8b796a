"""Tiny bundles for the fleet (plain LoRA, lora_B only, base deltas) and non-IID date parts, once per session."""

import pytest

from edgetune.tasks.dates import write_client_parts

_cache: dict = {}
FLEET_BUNDLES = {"lora": {}, "ffa": {"trainable": "lora_B"}, "fedex": {"base_delta": True}}
STRATEGY_BUNDLE = {"fedavg": "lora", "ffa": "ffa", "fedex": "fedex"}


@pytest.fixture(scope="session")
def fleet_bundle(tmp_path_factory, tiny_model_dir):
    """fleet_bundle(kind, arch="llama") -> a tiny bundle (q_proj, v_proj) of kind lora | ffa | fedex."""
    from edgetune.builder.pipeline import build_bundle
    from edgetune.options import BuildConfig

    def get(kind: str, arch: str = "llama"):
        key = (kind, arch)
        if key not in _cache:
            out = tmp_path_factory.mktemp(f"fleet_{kind}_{arch}") / "bundle"
            build_bundle(BuildConfig(str(tiny_model_dir(arch)), out, targets="q_proj,v_proj", **FLEET_BUNDLES[kind]))
            _cache[key] = out
        return _cache[key]

    return get


@pytest.fixture(scope="session")
def date_parts(tmp_path_factory):
    """4 non-IID client parts of 48 date examples and a held-out file of 16."""
    folder = tmp_path_factory.mktemp("date_parts")
    write_client_parts(folder, 4, 48, 16, seed=1)
    return folder
