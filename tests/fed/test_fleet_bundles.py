"""Bundles for the fleet: only lora_B trains (FFA-LoRA), and base deltas the device applies (FedEx-LoRA)."""

import json

import numpy as np
import pytest

from edgetune.common.errors import AdapterError, ConfigError
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import config_scaling, delta_key, load_adapter, lora_keys, save_adapter
from edgetune.fed.evaluation import heldout_loss
from edgetune.options import BuildConfig, TrainConfig
from edgetune.runtime.bundle_checkpoint import bundle_adapter
from edgetune.runtime.engine import Engine
from edgetune.runtime.generate import Generator
from edgetune.runtime.train import train


def _train(bundle, data, out, **kwargs):
    return train(TrainConfig(bundle, data, out, steps=3, lr=1e-2, batch_size=4, seq_len=48, progress=False, **kwargs))


def test_ffa_bundle_trains_only_lora_b(fleet_bundle, date_parts, tmp_path):
    bundle = fleet_bundle("ffa")
    manifest = read_manifest(bundle)
    assert manifest["trainable"] == "lora_B" and "trainable" not in read_manifest(fleet_bundle("lora"))
    before = bundle_adapter(bundle, manifest)
    _train(bundle, date_parts / "client-00.jsonl", tmp_path / "run")
    after, _ = load_adapter(tmp_path / "run" / "adapter", manifest)
    for module in manifest["adapted_modules"]:
        key_a, key_b = lora_keys(module)
        np.testing.assert_array_equal(after[key_a], before[key_a])  # frozen: the seeded A
        assert np.abs(after[key_b]).max() > 0  # B started at 0 and trained


def test_trainable_and_base_delta_are_refused_where_they_cannot_apply(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir("llama"))
    with pytest.raises(ConfigError, match="trainable"):
        BuildConfig(model, tmp_path / "b", method="dora", trainable="lora_B")
    with pytest.raises(ConfigError, match="base_delta"):
        BuildConfig(model, tmp_path / "b", method="qlora", quant="int8", base_delta=True)
    with pytest.raises(ConfigError, match="trainable"):
        BuildConfig(model, tmp_path / "b", trainable="lora_A")


def _delta_equivalent(bundle, manifest, seed=0):
    """(A₁, B₁, Δ=0) and (A₀, B=0, Δ=s·B₁·A₁): the same weights, one through the adapter, one through Δ."""
    rng = np.random.default_rng(seed)
    start = bundle_adapter(bundle, manifest)
    scale = config_scaling(manifest["adapter_config"])
    via_adapter, via_delta = dict(start), dict(start)
    for module in manifest["adapted_modules"]:
        key_a, key_b = lora_keys(module)
        b = rng.normal(scale=0.5, size=start[key_b].shape).astype(np.float32)
        via_adapter[key_b] = b
        via_delta[delta_key(module)] = (scale * (b.astype(np.float64) @ start[key_a])).astype(np.float32)
    return start, via_adapter, via_delta


def test_the_training_graph_adds_the_base_delta_like_the_adapter(fleet_bundle, date_parts):
    bundle = fleet_bundle("fedex")
    manifest = read_manifest(bundle)
    assert manifest["base_delta"] is True
    start, via_adapter, via_delta = _delta_equivalent(bundle, manifest)
    data = date_parts / "heldout.jsonl"
    losses = [heldout_loss(bundle, arrays, data, 4, 48) for arrays in (start, via_adapter, via_delta)]
    print(f"held-out loss: initial {losses[0]:.6f}, via adapter {losses[1]:.6f}, via delta {losses[2]:.6f}")
    assert abs(losses[1] - losses[0]) > 1e-3  # the change is visible ...
    assert abs(losses[2] - losses[1]) < 1e-5  # ... and Δ makes exactly the adapter's change


def test_adapters_with_deltas_train_on_base_delta_bundles_merge_anywhere_and_are_not_served_unmerged(
    fleet_bundle, date_parts, tmp_path
):
    from edgetune.runtime.merge import merge

    bundle = fleet_bundle("fedex")
    manifest = read_manifest(bundle)
    _, via_adapter, via_delta = _delta_equivalent(bundle, manifest)
    sha = manifest["source"]["weights_sha256"]
    deltas = {k: v for k, v in via_delta.items() if k.endswith("weight_delta")}
    adapter = {k: v for k, v in via_delta.items() if k not in deltas}
    save_adapter(tmp_path / "with_delta", adapter, manifest["adapter_config"], sha, deltas)
    summary = _train(bundle, date_parts / "client-00.jsonl", tmp_path / "run", init_adapter=tmp_path / "with_delta")
    assert summary["steps"] == 3

    plain = fleet_bundle("lora")
    with pytest.raises(Exception, match="cannot train on"):
        _train(plain, date_parts / "client-00.jsonl", tmp_path / "run2", init_adapter=tmp_path / "with_delta")
    with pytest.raises(AdapterError, match="serve it merged"):
        Generator(bundle, adapter=tmp_path / "with_delta")
    with pytest.raises(AdapterError, match="serve it merged"):
        Engine(bundle, max_batch=1).load_adapter("fedex", tmp_path / "with_delta")

    save_adapter(tmp_path / "no_delta", {k: via_adapter[k] for k in adapter}, manifest["adapter_config"], sha)
    prompt = json.loads((date_parts / "heldout.jsonl").read_text().splitlines()[0])["prompt"]
    logits = []
    for name in ("with_delta", "no_delta"):
        merge(plain, tmp_path / name, tmp_path / f"merged_{name}")  # any bundle of the base merges a delta
        g = Generator(tmp_path / f"merged_{name}")
        logits.append(g._step(np.array([g.tokenizer.encode(prompt).ids]), 0, g._empty_past, g._adapter)[0])
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-4)
