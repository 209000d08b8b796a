"""Run-folder checkpoints: atomic saves, the newest wins, failures keep the previous one."""

import numpy as np
import pytest
from onnxruntime.training.api import CheckpointState, Module, Optimizer

from edgetune.common.errors import CheckpointError
from edgetune.common.manifest import read_manifest
from edgetune.common.names import BASE_WEIGHTS, CHECKPOINT, EVAL_MODEL, OPTIMIZER_MODEL, TRAINING_MODEL
from edgetune.common.peft import bundle_adapter_keys
from edgetune.runtime import checkpoints


def session(bundle):
    """State, Module and Optimizer on the bundle's initial checkpoint, after one AdamW step."""
    state = CheckpointState.load_checkpoint(str(bundle / CHECKPOINT))
    module = Module(str(bundle / TRAINING_MODEL), state, str(bundle / EVAL_MODEL))
    optimizer = Optimizer(str(bundle / OPTIMIZER_MODEL), module)
    ids = np.arange(3, 27, dtype=np.int64).reshape(2, 12)  # (B, S)
    labels = np.roll(ids, -1, axis=1)
    labels[:, -1] = -100
    module(ids, np.ones_like(ids), np.tile(np.arange(12), (2, 1)), labels)
    optimizer.step()
    return state


def resume_state(step, **extra):
    return {
        "step": step,
        "bundle": {"path": "b", "manifest_sha256": "m"},
        "data": {"path": "d", "sha256": "x"},
        "hparams": {"seed": 0, "batch_size": 4},
        **extra,
    }


def test_save_then_latest_and_reload(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama")
    state = session(bundle)
    folder, size = checkpoints.save(tmp_path, state, resume_state(3))
    assert folder == tmp_path / "checkpoints" / "step-000003" == checkpoints.latest(tmp_path)
    assert size == checkpoints.size(folder) > 0
    assert checkpoints.read_state(folder)["step"] == 3 and "saved_at" in checkpoints.read_state(folder)
    loaded = CheckpointState.load_checkpoint(str(folder / CHECKPOINT))
    for key in bundle_adapter_keys(read_manifest(bundle)):
        np.testing.assert_array_equal(loaded.parameters[key].data, state.parameters[key].data)


def test_a_new_save_replaces_the_old_one(tiny_bundle, tmp_path):
    state = session(tiny_bundle("llama"))
    checkpoints.save(tmp_path, state, resume_state(1))
    checkpoints.save(tmp_path, state, resume_state(2))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]


def test_crashed_save_leftovers_are_ignored_and_cleaned(tiny_bundle, tmp_path):
    state = session(tiny_bundle("llama"))
    checkpoints.save(tmp_path, state, resume_state(1))
    partial = tmp_path / "checkpoints" / ".step-000002.saving-abc"  # killed mid-save
    partial.mkdir()
    (partial / CHECKPOINT).write_bytes(b"half a checkpoint")
    incomplete = tmp_path / "checkpoints" / "step-000003"  # no state.json: never a resume point
    incomplete.mkdir()
    (incomplete / CHECKPOINT).write_bytes(b"x")
    assert checkpoints.latest(tmp_path).name == "step-000001"
    checkpoints.remove_partial(tmp_path)
    assert not partial.exists()
    assert checkpoints.latest(tmp_path / "nothing") is None


def test_failed_save_keeps_the_previous_checkpoint(tiny_bundle, tmp_path, monkeypatch):
    state = session(tiny_bundle("llama"))
    checkpoints.save(tmp_path, state, resume_state(4))

    def full_disk(state, path, include_optimizer_state):
        with open(path, "wb") as f:
            f.write(b"partial")  # ORT wrote some bytes before the disk filled up
        raise RuntimeError(
            "checkpoint.cc:231 ToFile Failed to save checkpoint to file: x. error:No space left on device errno:28\n"
        )

    monkeypatch.setattr(CheckpointState, "save_checkpoint", full_disk)
    with pytest.raises(CheckpointError) as e:
        checkpoints.save(tmp_path, state, resume_state(8))
    assert str(e.value) == (
        f"{tmp_path / 'checkpoints'}: cannot save the checkpoint of step 8 "
        "(No space left on device); the checkpoint of step 4 is kept"
    )
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000004"]  # no temp folder left
    CheckpointState.load_checkpoint(str(tmp_path / "checkpoints" / "step-000004" / CHECKPOINT))


def test_checkpoint_holds_adapter_and_optimizer_state_only(tiny_bundle, tmp_path):
    """O(adapter): parameters + AdamW's two moments, no base weights."""
    bundle = tiny_bundle("llama", targets="q_proj,v_proj")
    state = session(bundle)
    _folder, size = checkpoints.save(tmp_path, state, resume_state(1))
    adapter_bytes = sum(state.parameters[k].data.nbytes for k in bundle_adapter_keys(read_manifest(bundle)))
    assert 3 * adapter_bytes < size < 3 * adapter_bytes + 8192
    assert size < 0.15 * (bundle / BASE_WEIGHTS).stat().st_size


def test_check_resumable_refuses_other_bundle_data_or_order(tmp_path):
    state = resume_state(2)
    ok = {"bundle": {"path": "b2", "manifest_sha256": "m"}, "data": {"path": "d", "sha256": "x"}}
    checkpoints.check_resumable(tmp_path, state, ok, {"seed": 0, "batch_size": 4}, ("seed", "batch_size"))
    with pytest.raises(CheckpointError, match="made with another bundle"):
        checkpoints.check_resumable(tmp_path, state, {**ok, "bundle": {"path": "c", "manifest_sha256": "z"}}, {}, ())
    with pytest.raises(CheckpointError, match="not the data this run was trained on"):
        checkpoints.check_resumable(tmp_path, state, {**ok, "data": {"path": "d", "sha256": "y"}}, {}, ())
    with pytest.raises(CheckpointError, match="batch_size was 4, not 8"):
        checkpoints.check_resumable(tmp_path, state, ok, {"seed": 0, "batch_size": 8}, ("seed", "batch_size"))
