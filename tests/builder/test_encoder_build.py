"""Building encoder bundles: what a bundle records, and the refusals of a task that does not fit."""

import json

import numpy as np
import pytest

from edgetune.common.errors import AdapterError, ConfigError
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import load_adapter, save_adapter
from edgetune.options import BuildConfig
from tests.parity import checkpoint_adapter


@pytest.mark.parametrize(
    "task, labels, message",
    [
        ("text-classification", None, "needs two or more label names"),
        ("token-classification", "O", "needs two or more label names"),
        ("text-classification", "ham,ham", "names a label twice"),
        ("question-answering", "a,b", "task question-answering takes no labels"),
        ("causal-lm", "a,b", "task causal-lm takes no labels"),
    ],
)
def test_labels_are_checked_with_the_task(task, labels, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as error:
        BuildConfig("model", tmp_path / "out", task=task, labels=labels)
    assert error.value.field == "labels"


def test_labels_may_be_a_comma_separated_string():
    config = BuildConfig("model", "out", task="text-classification", labels=" ham, spam")
    assert config.labels == ("ham", "spam")


def test_a_task_must_fit_the_family(encoder_model_dir, tiny_model_dir, tmp_path):
    from edgetune.builder.pipeline import build_bundle

    with pytest.raises(ConfigError, match="bert is an encoder: build it for one of text-classification"):
        build_bundle(BuildConfig(str(encoder_model_dir("bert")), tmp_path / "a"))
    with pytest.raises(ConfigError, match="needs an encoder model; llama is a causal LM"):
        build_bundle(BuildConfig(str(tiny_model_dir("llama")), tmp_path / "b", task="question-answering"))


def test_the_manifest_records_labels_head_and_peft_config(encoder_bundle):
    manifest = read_manifest(encoder_bundle("distilbert", "text-classification"))
    assert manifest["task"] == "text-classification" and manifest["labels"] == ["neg", "pos", "mixed"]
    config = manifest["adapter_config"]
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["pre_classifier", "classifier"]
    assert manifest["head_tensors"]["base_model.model.classifier.weight"] == [3, 32]
    assert not any("classifier" in m for m in manifest["adapted_modules"])  # LoRA never targets the head
    hf_config = json.loads((encoder_bundle("distilbert", "text-classification") / "config.json").read_text())
    assert hf_config["id2label"] == {"0": "neg", "1": "pos", "2": "mixed"}


def test_an_adapter_with_another_head_is_refused(encoder_bundle, tmp_path):
    bundle = encoder_bundle("bert", "text-classification")
    manifest = read_manifest(bundle)
    weights = checkpoint_adapter(bundle)
    weights["base_model.model.classifier.weight"] = np.zeros((5, 32), np.float32)  # five labels, not three
    save_adapter(tmp_path / "a", weights, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    with pytest.raises(AdapterError, match=r"classifier.weight has shape \(5, 32\), the bundle's head \(3, 32\)"):
        load_adapter(tmp_path / "a", manifest)
    other = {**manifest["adapter_config"], "modules_to_save": ["score"]}
    save_adapter(tmp_path / "b", checkpoint_adapter(bundle), other, manifest["source"]["weights_sha256"])
    with pytest.raises(AdapterError, match=r"modules_to_save=\['score'\] is not this bundle's \['classifier'\]"):
        load_adapter(tmp_path / "b", manifest)
