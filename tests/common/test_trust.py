"""Signatures: keygen, signed bundles and adapters, and refusals while trusted keys are configured."""

import json
import stat

import pytest

from edgetune.common import names
from edgetune.common.bundle import open_bundle, sign_manifest
from edgetune.common.errors import AdapterError, BundleError
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import load_adapter, save_adapter
from edgetune.common.trust import TRUSTED_KEYS_ENV, TrustError, keygen, load_trusted_keys
from edgetune.runtime.generate import Generator
from tests.parity import random_adapter
from tests.tamper import copy_bundle, flip_byte
from tests.test_cli import edgetune


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs: `good` (trusted) and `other` (not)."""
    folder = tmp_path_factory.mktemp("keys")
    for name in ("good", "other"):
        keygen(folder / name)
    return folder


@pytest.fixture
def signed(tiny_bundle, keys, tmp_path):
    """A copy of the tiny llama bundle signed with the trusted key."""
    folder = copy_bundle(tiny_bundle("llama"), tmp_path / "signed")
    sign_manifest(folder, keys / "good")
    return folder


def _adapter(bundle, folder, key=None):
    manifest = read_manifest(bundle)
    weights = random_adapter(bundle, seed=3)
    save_adapter(folder, weights, manifest["adapter_config"], manifest["source"]["weights_sha256"], key=key)
    return folder


def test_keygen_writes_a_private_key_0600_and_a_public_line(keys):
    assert stat.S_IMODE((keys / "good").stat().st_mode) == 0o600
    line = (keys / "good.pub").read_text()
    assert line.startswith("ssh-ed25519 ") and line.count("\n") == 1
    assert len(load_trusted_keys(keys / "good.pub").keys) == 1
    with pytest.raises(TrustError, match="already exists"):
        keygen(keys / "good")


def test_a_signed_bundle_opens_with_its_key_and_no_other(signed, keys, tiny_bundle):
    assert open_bundle(signed, trust=keys / "good.pub").signed_by.startswith("SHA256:")
    assert open_bundle(signed).signed_by is None  # no keys configured: origin not checked
    with pytest.raises(TrustError, match=r"signed by SHA256:\S+, which is not in .*other.pub$"):
        open_bundle(signed, trust=keys / "other.pub")
    with pytest.raises(TrustError, match="not signed, and trusted keys are configured"):
        open_bundle(tiny_bundle("llama"), trust=keys / "good.pub")


def test_the_environment_variable_configures_trust_for_every_opener(signed, keys, tiny_bundle, monkeypatch):
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(keys / "good.pub"))
    Generator(signed)
    with pytest.raises(TrustError, match="not signed"):
        Generator(tiny_bundle("llama"))
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(keys / "missing.pub"))
    with pytest.raises(TrustError, match=r"missing\.pub: no such trusted keys file"):
        open_bundle(signed)


def test_a_manifest_changed_after_signing_is_refused(signed, keys):
    manifest = json.loads((signed / names.MANIFEST).read_text())
    manifest["files"]["config.json"]["size"] += 0  # same content, other bytes: still not what was signed
    (signed / names.MANIFEST).write_text(json.dumps(manifest, indent=1))
    with pytest.raises(TrustError, match=r"does not match \(the manifest was changed after signing"):
        open_bundle(signed, trust=keys / "good.pub")


def test_a_file_edited_after_signing_fails_its_signed_hash(signed, keys):
    flip_byte(signed / names.INFERENCE_MODEL, 300)
    with pytest.raises(BundleError, match=r"inference\.onnx: sha256 does not match"):
        open_bundle(signed, trust=keys / "good.pub")


def test_adapters_signed_unsigned_and_tampered(tiny_bundle, keys, tmp_path):
    bundle = tiny_bundle("llama")
    manifest = read_manifest(bundle)
    good = _adapter(bundle, tmp_path / "good", key=keys / "good")
    load_adapter(good, manifest, trust=keys / "good.pub")
    with pytest.raises(TrustError, match="not in"):
        load_adapter(good, manifest, trust=keys / "other.pub")
    unsigned = _adapter(bundle, tmp_path / "unsigned")
    load_adapter(unsigned, manifest)  # no keys configured
    with pytest.raises(TrustError, match="not signed"):
        load_adapter(unsigned, manifest, trust=keys / "good.pub")
    config = json.loads((good / names.ADAPTER_CONFIG).read_text())
    config["lora_alpha"] *= 4  # a stronger adapter, same tensors
    (good / names.ADAPTER_CONFIG).write_text(json.dumps(config))
    with pytest.raises(TrustError, match="the adapter was changed after signing"):
        load_adapter(good, manifest, trust=keys / "good.pub")
    (unsigned / names.ADAPTER_WEIGHTS).unlink()
    (unsigned / names.ADAPTER_WEIGHTS).symlink_to(good / names.ADAPTER_WEIGHTS)
    with pytest.raises(AdapterError, match="not a regular file"):
        load_adapter(unsigned, manifest)


def test_cli_keygen_sign_and_trust(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle("llama"), tmp_path / "bundle")
    code, out, err = edgetune("keygen", tmp_path / "key")
    assert code == 0 and "key.pub" in out, err
    code, _, err = edgetune(
        "generate", bundle, "--prompt", "the", "--max-new-tokens", "2", "--trust", tmp_path / "key.pub"
    )
    assert code == 1 and err.count("\n") == 1 and "not signed, and trusted keys are configured" in err, err
    code, out, err = edgetune("sign", bundle, "--key", tmp_path / "key")
    assert code == 0 and "signed" in out, err
    code, _, err = edgetune("inspect", bundle, "--trust", tmp_path / "key.pub")
    assert code == 0 and "signed by trusted key SHA256:" in err, err
    code, _, err = edgetune(
        "generate", bundle, "--prompt", "the", "--max-new-tokens", "2", "--trust", tmp_path / "key.pub"
    )
    assert code == 0, err
    (tmp_path / "bad.pub").write_text("not a key\n")
    code, _, err = edgetune("inspect", bundle, "--trust", tmp_path / "bad.pub")
    assert code == 1 and err.count("\n") == 1 and "bad.pub:1: not an OpenSSH public key line" in err, err


def test_build_train_and_merge_sign_what_they_write(tiny_model_dir, keys, tmp_path):
    from edgetune.builder.pipeline import build_bundle
    from edgetune.options import BuildConfig, TrainConfig
    from edgetune.runtime.merge import merge
    from edgetune.runtime.train import train
    from tests.tiny_models import sample_text

    trusted = keys / "good.pub"
    bundle = tmp_path / "bundle"
    build_bundle(BuildConfig(str(tiny_model_dir("llama")), bundle, targets="q_proj", sign=keys / "good"))
    assert open_bundle(bundle, trust=trusted).signed_by
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_text(8)))
    config = TrainConfig(bundle, data, tmp_path / "run", steps=1, batch_size=4, seq_len=32, progress=False)
    train(TrainConfig(**{**vars(config), "trust": trusted, "sign": keys / "good"}))
    load_adapter(tmp_path / "run" / "adapter", read_manifest(bundle), trust=trusted)
    merge(bundle, tmp_path / "run" / "adapter", tmp_path / "merged", trust=trusted, sign=keys / "good")
    Generator(tmp_path / "merged", trust=trusted).generate_ids([5, 6], 2)
    with pytest.raises(TrustError, match="not in"):
        merge(bundle, tmp_path / "run" / "adapter", tmp_path / "merged2", trust=keys / "other.pub")
    with pytest.raises(TrustError, match="no such key file"):
        build_bundle(BuildConfig(str(tiny_model_dir("llama")), tmp_path / "b2", sign=tmp_path / "nokey"))
    assert not (tmp_path / "b2").exists()
