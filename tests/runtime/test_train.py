"""The training recipe end to end on tiny bundles: run folder, adapter, resume, failures."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from onnxruntime.training.api import CheckpointState
from safetensors.numpy import load_file

from edgetune.common.errors import AdapterError, BundleError, CheckpointError, DataError, EdgetuneError, TrainingError
from edgetune.common.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CHECKPOINT
from edgetune.common.peft import config_scaling
from edgetune.options import TrainConfig
from edgetune.runtime import checkpoints
from edgetune.runtime.metrics import read_metrics
from edgetune.runtime.train import train

sys.path.insert(0, str(Path(__file__).parents[1] / "build"))
from tests.parity import inference_logits
from tests.tiny_models import sample_text

TINY = dict(batch_size=4, seq_len=48, progress=False)  # a step takes milliseconds
BLOCK_TORCH = """
import sys
for name in ("torch", "transformers", "optimum", "peft"):
    sys.modules[name] = None  # as if not installed: import fails, importlib.util.find_spec gives None
"""
SLOW_STEPS = """
import time
from edgetune.runtime.ort_training import Optimizer
_step = Optimizer.step
Optimizer.step = lambda self: (time.sleep(0.05), _step(self))[1]  # time to catch the run mid-way
"""
RUN = """
import json, sys
from edgetune.common.errors import EdgetuneError
from edgetune.options import TrainConfig
from edgetune.runtime.train import train
try:
    print(json.dumps(train(TrainConfig(**json.loads(sys.argv[1])), catch_signals=True)))  # as the CLI
except EdgetuneError as e:
    print(f"edgetune: {e}", file=sys.stderr)
    sys.exit(1)
"""


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train.jsonl (32 text examples) and eval.jsonl (8 prompt/completion pairs)."""
    folder = tmp_path_factory.mktemp("data")
    train_file = write_jsonl(folder / "train.jsonl", [{"text": t} for t in sample_text(32, seed=1)])
    eval_file = write_jsonl(
        folder / "eval.jsonl", [{"prompt": t[:12], "completion": t[12:]} for t in sample_text(8, seed=2)]
    )
    return train_file, eval_file


def start(args: dict, prelude: str = "") -> subprocess.Popen:
    """`train(**args)` in a torch-free subprocess that exits like the CLI (1 + one line on error)."""
    args = {k: str(v) if isinstance(v, Path) else v for k, v in args.items()}
    return subprocess.Popen(
        [sys.executable, "-c", BLOCK_TORCH + prelude + RUN, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def adapter(run):
    return load_file(run / "adapter" / ADAPTER_WEIGHTS)


@pytest.fixture(scope="module")
def run(tiny_bundle, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    summary = train(
        TrainConfig(
            tiny_bundle("llama"), data[0], out, eval_data=data[1], epochs=3, lr=5e-3, eval_every=8, save_every=5, **TINY
        )
    )
    return out, summary


def test_run_folder(run):
    out, summary = run
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter",
        "checkpoints",
        "loss.png",
        "metrics.jsonl",
        "summary.json",
    ]
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["steps"] == 24 and summary["epochs"] == 3.0 and summary["examples"] == 32
    assert summary["truncated"] == 0 and 0 < summary["padding_fraction"] < 0.5
    assert summary["tokens_per_s"] > 0 and summary["startup_s"] > 0 and summary["peak_rss_bytes"] > 0
    assert summary["checkpoint"].endswith("step-000024") and summary["checkpoint_bytes"] > 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000024"]
    records = read_metrics(out)
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, 25))
    assert [r["step"] for r in records if r["type"] == "eval"] == [8, 16, 24]
    assert summary["final_eval_loss"] == records[-1]["eval_loss"]
    assert summary["final_perplexity"] == pytest.approx(np.exp(summary["final_eval_loss"]))


def test_loss_goes_down(run):
    records = read_metrics(run[0])
    train_loss = [r["loss"] for r in records if r["type"] == "train"]
    evals = [r["eval_loss"] for r in records if r["type"] == "eval"]
    assert np.mean(train_loss[-8:]) < np.mean(train_loss[:8]) - 0.1  # epoch 3 vs epoch 1
    assert evals[-1] < evals[0]


def test_adapter_loads_in_peft_and_matches_inference_graph(run, tiny_bundle, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, bundle = run[0], tiny_bundle("llama")
    weights = adapter(out)
    assert all(np.abs(w).max() > 0 for w in weights.values())  # B moved off zero
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    peft = PeftModel.from_pretrained(base, out / "adapter").eval()
    ids = np.random.default_rng(0).integers(3, 300, (2, 10)).astype(np.int64)  # (B, S)
    with torch.no_grad():
        ref = peft(torch.from_numpy(ids)).logits.numpy()
    config = json.loads((out / "adapter" / ADAPTER_CONFIG).read_text())
    np.testing.assert_allclose(inference_logits(bundle, ids, weights, config_scaling(config)), ref, atol=1e-4, rtol=0)


def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_bundle, data, tmp_path):
    args = dict(bundle=tiny_bundle("llama"), data=data[0], steps=20, lr=5e-3, save_every=4, **TINY)
    train(TrainConfig(out=tmp_path / "whole", **args))

    proc = start({**args, "out": tmp_path / "killed"}, SLOW_STEPS)
    wait_for(lambda: checkpoints.latest(tmp_path / "killed") is not None, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoints.read_state(checkpoints.latest(tmp_path / "killed"))["step"]
    assert 4 <= killed_at < 20 and not (tmp_path / "killed" / "adapter").exists()

    summary = train(TrainConfig(out=tmp_path / "killed", resume=True, **args))
    assert summary["steps"] == 20 and summary["steps_this_run"] == 20 - killed_at
    ours, ref = adapter(tmp_path / "killed"), adapter(tmp_path / "whole")
    assert max(np.abs(ours[k] - ref[k]).max() for k in ref) <= 1e-6
    records = read_metrics(tmp_path / "killed")
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, 21))  # redone steps not doubled
    assert {"type": "resume", "step": killed_at, "changed": {}} in records


def test_sigterm_finishes_the_step_saves_and_exits_nonzero(tiny_bundle, data, tmp_path):
    out = tmp_path / "run"
    proc = start(dict(bundle=tiny_bundle("llama"), data=data[0], out=out, steps=200, **TINY), SLOW_STEPS)
    wait_for(lambda: len(read_metrics(out)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    step = checkpoints.read_state(checkpoints.latest(out))["step"]
    assert err.strip().splitlines() == [
        f"edgetune: stopped by SIGTERM after step {step}; checkpoint saved in "
        f"{out / 'checkpoints' / f'step-{step:06d}'} (continue with --resume)"
    ]
    assert read_metrics(out)[-1]["step"] == step


def test_full_disk_keeps_the_previous_checkpoint(tiny_bundle, data, tmp_path):
    """After the first save, the process may not write files over 32 KiB (RLIMIT_FSIZE): the next
    checkpoint (~200 KiB) fails inside ORT's writer with EFBIG, as a full disk fails with ENOSPC."""
    fill_disk_after_first_save = """
import resource, signal
from edgetune.runtime import checkpoints
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
_save = checkpoints.save
def save(*args):
    result = _save(*args)
    resource.setrlimit(resource.RLIMIT_FSIZE, (32768, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return result
checkpoints.save = save
"""
    out = tmp_path / "run"
    args = dict(bundle=tiny_bundle("llama"), data=data[0], steps=12, save_every=4, **TINY)
    proc = start({**args, "out": out}, fill_disk_after_first_save)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.strip().splitlines() == [
        f"edgetune: {out / 'checkpoints'}: cannot save the checkpoint of step 8 "
        "(File too large); the checkpoint of step 4 is kept"
    ]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000004"]
    CheckpointState.load_checkpoint(str(out / "checkpoints" / "step-000004" / CHECKPOINT))
    assert train(TrainConfig(out=out, resume=True, **args))["steps"] == 12  # and the run goes on from it


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tiny_bundle, data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(
        TrainingError,
        match=r"^loss is nan at step 2: training stopped; the checkpoint of "
        r"step 1 is kept \(try a lower --lr\)$",
    ):
        train(TrainConfig(tiny_bundle("llama"), data[0], out, steps=6, lr=1e30, warmup=0, save_every=1, **TINY))
    assert checkpoints.read_state(checkpoints.latest(out))["step"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "metrics.jsonl"]  # no adapter, no summary


def test_bad_data_is_refused_before_the_run_folder_exists(tiny_bundle, data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data[0].read_text() + '{"text": "a"\n{"prompt": "only a prompt"}\n')
    out = tmp_path / "run"
    with pytest.raises(DataError, match=rf"^{bad}:33: malformed JSON"):
        train(TrainConfig(tiny_bundle("llama"), bad, out, steps=1, **TINY))
    assert not out.exists()
    summary = train(TrainConfig(tiny_bundle("llama"), bad, out, steps=1, skip_bad_lines=True, **TINY))
    assert summary["skipped_lines"] == 2 and summary["examples"] == 32


def test_structure_error_names_the_line(tiny_bundle, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"prompt": "only a prompt"}])
    with pytest.raises(DataError, match=rf'^{bad}:2: missing field "completion"$'):
        train(TrainConfig(tiny_bundle("llama"), bad, tmp_path / "run", steps=1, **TINY))
    assert not (tmp_path / "run").exists()


def test_corrupted_bundle_is_refused(tiny_bundle, data, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle("llama"), bundle)
    with open(bundle / "base_weights.bin", "r+b") as f:
        f.write(b"\x01")
    with pytest.raises(BundleError, match=r"base_weights.bin: sha256 does not match the manifest"):
        train(TrainConfig(bundle, data[0], tmp_path / "run", steps=1, **TINY))
    assert not (tmp_path / "run").exists()


def test_resume_refusals(tiny_bundle, data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match=rf"^{out}: nothing to resume"):
        train(TrainConfig(tiny_bundle("llama"), data[0], out, steps=2, resume=True, **TINY))
    assert not out.exists()
    train(TrainConfig(tiny_bundle("llama"), data[0], out, steps=2, **TINY))
    with pytest.raises(TrainingError, match="already holds a run"):
        train(TrainConfig(tiny_bundle("llama"), data[0], out, steps=2, **TINY))
    with pytest.raises(CheckpointError, match=r"made with another bundle .* refusing to resume$"):
        train(TrainConfig(tiny_bundle("phi3"), data[0], out, steps=4, resume=True, **TINY))
    with pytest.raises(CheckpointError, match="seed was 0, not 1"):
        train(TrainConfig(tiny_bundle("llama"), data[0], out, steps=4, resume=True, seed=1, **TINY))
    before = (out / "summary.json").read_text()
    summary = train(
        TrainConfig(tiny_bundle("llama"), data[0], out, steps=4, lr=1e-3, resume=True, **TINY)
    )  # more steps
    assert summary["steps"] == 4 and before != (out / "summary.json").read_text()
    assert read_metrics(out)[2] == {"type": "resume", "step": 2, "changed": {"lr": [2e-4, 1e-3], "total_steps": [2, 4]}}


def test_init_adapter(run, tiny_bundle, data, tmp_path):
    trained = run[0] / "adapter"
    train(TrainConfig(tiny_bundle("llama"), data[0], tmp_path / "run", steps=1, lr=1e-12, init_adapter=trained, **TINY))
    ours, initial = adapter(tmp_path / "run"), adapter(run[0])
    assert max(np.abs(ours[k] - initial[k]).max() for k in initial) < 1e-6  # started from it (lr ~ 0)
    other = tmp_path / "other"
    other.mkdir()
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        (other / name).write_bytes((trained / name).read_bytes())
    config = json.loads((other / ADAPTER_CONFIG).read_text())
    (other / ADAPTER_CONFIG).write_text(json.dumps({**config, "lora_alpha": 32}))
    with pytest.raises(AdapterError, match="lora_alpha=32 differ from the bundle's r=8, lora_alpha=16"):
        train(TrainConfig(tiny_bundle("llama"), data[0], tmp_path / "run2", steps=1, init_adapter=other, **TINY))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(steps=2, epochs=1), "steps: give steps or epochs, not both"),
        (dict(steps=0), "steps: must be a whole number >= 1, got 0"),
        (dict(lr=float("nan")), "lr: must be a finite number > 0, got nan"),
        (dict(schedule="step"), "schedule: must be one of cosine, linear, constant, got 'step'"),
        (dict(warmup=2.5), "warmup: of 1 or more is a number of steps and must be whole, got 2.5"),
        (dict(eval_every=5), "eval_every: needs eval data"),
    ],
)
def test_bad_options(options, message, tiny_bundle, data, tmp_path):
    with pytest.raises(EdgetuneError) as e:
        train(TrainConfig(tiny_bundle("llama"), data[0], tmp_path / "run", **{**TINY, **options}))
    assert str(e.value) == message
    assert not (tmp_path / "run").exists()


def test_signal_handlers_are_restored(tiny_bundle, data, tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    train(TrainConfig(tiny_bundle("llama"), data[0], tmp_path / "run", steps=1, **TINY))
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
