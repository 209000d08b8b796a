"""Encoder bundles on the device side: training and prediction torch-free, the CLI, class weights."""

import json
import subprocess
import sys

import numpy as np
import pytest

from edgetune.cli import main
from tests.runtime.test_torch_free import BANNED, UNINSTALL
from tests.tiny_encoders import task_examples

TASKS = ("text-classification", "token-classification", "question-answering")
RUN = f"""
import json
from edgetune.options import TrainConfig
from edgetune.runtime.predict import Classifier, Reader, Tagger
from edgetune.runtime.train import train
args = json.loads(sys.argv[1])
summary = train(TrainConfig(**args["train"]))
task, bundle, adapter = args["task"], args["train"]["bundle"], args["train"]["out"] + "/adapter"
if task == "text-classification":
    predicted = Classifier(bundle, adapter, batch_size=3).predict(["alice pays paris", "bob meets london"])
elif task == "token-classification":
    predicted = Tagger(bundle, adapter).predict([["alice", "meets", "in", "paris"]])
else:
    predicted = Reader(bundle, adapter).predict([{{"question": "where", "context": "bob meets bob in paris"}}])
loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in {BANNED})
print(json.dumps({{"summary": summary, "predicted": predicted, "loaded": loaded}}))
"""


def _data(tmp_path, task: str, n: int = 24) -> str:
    path = tmp_path / f"{task}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in task_examples(task, n)))
    return str(path)


@pytest.mark.parametrize("task", TASKS)
def test_training_and_prediction_run_with_torch_uninstalled(task, encoder_bundle, tmp_path):
    data = _data(tmp_path, task)
    train = dict(
        bundle=str(encoder_bundle("bert", task)),
        data=data,
        eval_data=data,
        out=str(tmp_path / "run"),
        steps=4,
        batch_size=8,
        seq_len=32,
        eval_every=2,
        lr=1e-3,
        progress=False,
        class_weights="auto" if task == "text-classification" else None,
    )
    proc = subprocess.run(
        [sys.executable, "-c", UNINSTALL + RUN, json.dumps({"task": task, "train": train})],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["loaded"] == []
    final = result["summary"]["final_eval"]
    metric = {"text-classification": "accuracy", "token-classification": "entity_f1", "question-answering": "f1"}
    assert final["eval_loss"] > 0 and metric[task] in final
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "eval"] == [2, 4]
    predicted = result["predicted"]
    if task == "text-classification":
        assert len(predicted) == 2 and set(predicted) <= {"neg", "pos", "mixed"}
    elif task == "token-classification":
        assert len(predicted[0]) == 4
    else:
        assert predicted[0]["answer"] in "bob meets bob in paris"


def test_predict_cli_prints_jsonl_and_metrics(encoder_bundle, tmp_path, capsys):
    data = _data(tmp_path, "text-classification", n=5)
    bundle = str(encoder_bundle("bert", "text-classification"))
    assert main(["predict", bundle, "--data", data, "--metrics"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 5 and rows[0]["source"].endswith(":1") and len(rows[0]["probabilities"]) == 3
    assert err.startswith("5 examples: accuracy ") and "macro_f1" in err
    assert main(["predict", bundle, "--data", data, "--precision", "fp32", "--metrics-only"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("5 examples: accuracy ") and err == ""
    assert main(["predict", bundle, "--data", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl: no such file" in capsys.readouterr().err


def test_class_weights_weigh_the_loss_as_torch_does(encoder_bundle):
    import torch

    from edgetune.common.names import CLASS_WEIGHTS, LABELS
    from tests.parity import checkpoint_adapter, ort_training

    bundle = encoder_bundle("bert", "text-classification")
    _state, module, _ = ort_training(bundle, checkpoint_adapter(bundle))  # the state must outlive the module
    module.eval()
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(5, 100, (4, 6)), "attention_mask": np.ones((4, 6), np.int64)}
    feeds["token_type_ids"] = np.zeros((4, 6), np.int64)
    feeds[LABELS] = np.array([0, 1, 1, 2])
    weights = np.array([0.5, 2.0, 1.0], np.float32)
    loss, logits = module(*((feeds | {CLASS_WEIGHTS: weights})[n] for n in module.input_names()))
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(feeds[LABELS]), weight=torch.from_numpy(weights)
    )
    assert abs(float(loss) - expected.item()) < 1e-5


def test_a_causal_lm_bundle_refuses_class_weights(tiny_bundle, tmp_path):
    from edgetune.common.errors import ConfigError
    from edgetune.options import TrainConfig
    from edgetune.runtime.train import train

    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a b c"}\n')
    with pytest.raises(ConfigError, match="needs a classification bundle"):
        train(TrainConfig(tiny_bundle("llama"), data, tmp_path / "run", class_weights="auto", progress=False))


def test_generate_serve_and_merge_refuse_an_encoder_bundle(encoder_bundle, tmp_path):
    from edgetune.common.errors import BundleError
    from edgetune.runtime.engine import Engine
    from edgetune.runtime.generate import Generator
    from edgetune.runtime.merge import merge

    bundle = encoder_bundle("bert", "question-answering")
    assert not (bundle / "serve.onnx").exists() and "serving" not in json.loads((bundle / "manifest.json").read_text())
    for open_model in (Generator, Engine):  # Engine: what edgetune serve opens
        with pytest.raises(BundleError, match="a question-answering bundle does not generate text"):
            open_model(bundle)
    with pytest.raises(BundleError, match="merge supports causal-lm bundles, not question-answering"):
        merge(bundle, tmp_path / "adapter", tmp_path / "merged")
