"""Adapters, checkpoints and run folders from strangers or careless hands: refused with one line, or made safe."""

import json
import os
import pickle
import signal
import threading

import numpy as np
import pytest
from safetensors.numpy import save_file

from edgetune.common import names
from edgetune.common.errors import AdapterError, CheckpointError, TrainingError
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import save_adapter
from edgetune.options import TrainConfig
from edgetune.runtime import checkpoints
from edgetune.runtime.generate import Generator
from edgetune.runtime.merge import merge
from edgetune.runtime.train import train
from tests.parity import random_adapter
from tests.runtime.test_train import SLOW_STEPS, TINY, start, wait_for


def _adapter(bundle, folder, seed=3, edit=None):
    manifest = read_manifest(bundle)
    weights = random_adapter(bundle, seed=seed, scale=0.3)
    if edit:
        edit(weights)
    save_adapter(folder, weights, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    return folder


def _one_line(e) -> str:
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


def test_nan_or_inf_adapters_are_refused_naming_the_tensor(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama")
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    nan = _adapter(bundle, tmp_path / "nan", edit=lambda w: w[key].__setitem__((0, 0), np.nan))
    g = Generator(bundle)
    with pytest.raises(AdapterError) as e:
        g.set_adapter(nan)
    assert key in _one_line(e) and "NaN or infinite" in str(e.value)
    with pytest.raises(AdapterError, match="NaN or infinite"):
        merge(bundle, nan, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    alpha = _adapter(bundle, tmp_path / "alpha")
    config = json.loads((alpha / names.ADAPTER_CONFIG).read_text())
    for value in ("NaN", "Infinity"):
        (alpha / names.ADAPTER_CONFIG).write_text(
            json.dumps(config).replace('"lora_alpha": 16.0', f'"lora_alpha": {value}')
        )
        with pytest.raises(AdapterError, match=rf"lora_alpha={value.lower()[:3]}.* is not a finite number"):
            g.set_adapter(alpha)


def test_adapters_of_the_wrong_shape_or_format_are_one_line_errors(tiny_bundle, data_file, tmp_path):
    bundle = tiny_bundle("llama")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    wide = _adapter(bundle, tmp_path / "wide", edit=lambda w: w.__setitem__(key, np.zeros((8, 96), np.float32)))
    with pytest.raises(AdapterError) as e:
        merge(bundle, wide, tmp_path / "merged")
    assert key in _one_line(e) and "does not fit the layer's 64 inputs" in str(e.value)
    with pytest.raises(AdapterError) as e:
        train(TrainConfig(bundle, data_file, tmp_path / "run", steps=1, init_adapter=wide, **TINY))
    assert key in _one_line(e) and "(8, 64)" in str(e.value)
    pickled = _adapter(bundle, tmp_path / "pickled")
    (pickled / names.ADAPTER_WEIGHTS).write_bytes(pickle.dumps({"a": np.zeros(3)}))
    with pytest.raises(AdapterError, match="not a readable safetensors file"):
        Generator(bundle, adapter=pickled)
    ints = _adapter(bundle, tmp_path / "ints")
    save_file({key: np.zeros((8, 64), np.int32)}, ints / names.ADAPTER_WEIGHTS)
    with pytest.raises(AdapterError, match="int32, not floating point"):
        merge(bundle, ints, tmp_path / "merged")


@pytest.fixture
def data_file(tmp_path):
    from tests.tiny_models import sample_text

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_text(32, seed=1)))
    return path


def test_a_request_keeps_the_adapter_it_started_with(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama")
    first, second = _adapter(bundle, tmp_path / "a1", seed=1), _adapter(bundle, tmp_path / "a2", seed=2)
    g = Generator(bundle, adapter=first)
    prompt = [5, 17, 42, 8]
    with_first = "".join(g.stream_ids(prompt, 48))
    g.set_adapter(second)
    with_second = "".join(g.stream_ids(prompt, 48))
    assert with_first != with_second
    g.set_adapter(first)
    stream = g.stream_ids(prompt, 48)  # this request starts with the first adapter
    pieces = [next(stream)]
    g.set_adapter(second)  # swapped mid-request, here and from another thread all along
    stop = threading.Event()
    swapper = threading.Thread(target=lambda: [g.set_adapter(a) for a in (None, second) * 200 if not stop.is_set()])
    swapper.start()
    pieces += list(stream)
    stop.set()
    swapper.join()
    assert "".join(pieces) == with_first
    g.set_adapter(second)
    assert "".join(g.stream_ids(prompt, 48)) == with_second


def test_two_trainers_on_one_run_folder_and_a_stale_lock(tiny_bundle, data_file, tmp_path):
    out = tmp_path / "run"
    args = dict(bundle=tiny_bundle("llama"), data=data_file, out=out, steps=400, save_every=1, **TINY)
    first = start(args, SLOW_STEPS)
    try:
        wait_for(lambda: checkpoints.latest(out) is not None, first)
        with pytest.raises(TrainingError) as e:
            train(TrainConfig(**{**args, "resume": True}))
        assert f"{out}: in use by process {first.pid}" in _one_line(e)
        before = (out / names.METRICS).read_text()
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert (tmp_path / ".run.lock").exists()  # left behind by the killed process
    assert (out / names.METRICS).read_text().startswith(before[: before.rfind("\n", 0, len(before) - 1)])
    step = checkpoints.read_state(checkpoints.latest(out))["step"]
    summary = train(TrainConfig(**{**args, "steps": step + 1, "resume": True, "save_every": None}))
    assert summary["steps"] == step + 1 and not (tmp_path / ".run.lock").exists()


def test_resume_on_a_finished_run_is_refused_and_changes_nothing(tiny_bundle, data_file, tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(tiny_bundle("llama"), data_file, out, steps=2, **TINY)
    train(config)
    summary = (out / names.SUMMARY).read_text()
    with pytest.raises(TrainingError) as e:
        train(TrainConfig(**{**vars(config), "resume": True}))
    assert "already finished at step 2" in _one_line(e)
    assert (out / names.SUMMARY).read_text() == summary


def test_a_state_json_missing_a_key_is_a_one_line_error(tiny_bundle, data_file, tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(tiny_bundle("llama"), data_file, out, steps=3, save_every=1, **TINY)
    train(config)
    state_path = checkpoints.latest(out) / names.STATE
    state = json.loads(state_path.read_text())
    del state["data"]
    state_path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError) as e:
        train(TrainConfig(**{**vars(config), "steps": 4, "resume": True}))
    assert "field data.path is missing" in _one_line(e)


def test_a_full_disk_at_the_final_adapter_is_one_line_and_keeps_the_checkpoint(tiny_bundle, data_file, tmp_path):
    full_disk_after_the_checkpoint = """
import resource, signal
from edgetune.runtime import checkpoints
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
_save = checkpoints.save
def save(*args):
    result = _save(*args)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return result
checkpoints.save = save
"""
    out = tmp_path / "run"
    proc = start(
        dict(bundle=tiny_bundle("llama"), data=data_file, out=out, steps=2, **TINY), full_disk_after_the_checkpoint
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.count("\n") == 1, err
    assert f"{out / 'adapter'}: cannot save the adapter (File too large); the checkpoint of step 2 is kept" in err
    assert not (out / "adapter").exists() and checkpoints.latest(out).name == "step-000002"
