"""The library API for tuning: a background job from any thread, cancel and resume, a child process."""

import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest
from safetensors.numpy import load_file

from edgetune.common.errors import DataError, TrainingCancelledError
from edgetune.common.names import ADAPTER_WEIGHTS
from edgetune.runtime import Tuner, checkpoints
from tests.tiny_models import sample_text

TINY = dict(batch_size=4, seq_len=48, lr=5e-3)


@pytest.fixture(scope="module")
def examples():
    return [{"text": t} for t in sample_text(32, seed=3)]


def test_a_job_from_another_thread_reports_every_step(tiny_bundle, examples, tmp_path):
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    seen, result = [], {}

    def app_thread():
        job = Tuner(tiny_bundle("llama"), tmp_path / "run").start(examples, on_step=seen.append, steps=12, **TINY)
        result["progress"] = job.progress()
        result["summary"] = job.wait(120)
        result["final"] = job.progress()

    thread = threading.Thread(target=app_thread)
    thread.start()
    thread.join(180)
    assert result["progress"]["status"] == "running"
    assert [r["step"] for r in seen if r["type"] == "train"] == list(range(1, 13))
    assert all(r["total_steps"] == 12 for r in seen)
    assert result["final"]["status"] == "succeeded" and result["final"]["step"] == 12
    assert result["summary"]["steps"] == 12 and (tmp_path / "run" / "adapter" / ADAPTER_WEIGHTS).is_file()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers


@pytest.mark.parametrize("child_process", [False, True])
def test_cancel_leaves_a_resumable_checkpoint(tiny_bundle, examples, tmp_path, child_process):
    tuner = Tuner(tiny_bundle("llama"), tmp_path / "run", child_process=child_process)
    args = dict(steps=400, save_every=1000, **TINY)
    whole = Tuner(tiny_bundle("llama"), tmp_path / "whole").start(examples, steps=400, **TINY).wait(300)
    job = tuner.start(examples, **args)
    while job.progress()["step"] < 3:
        assert not job.done, job.error
        time.sleep(0.01)
    job.cancel()
    with pytest.raises(TrainingCancelledError) as e:
        job.wait(120)
    assert job.progress()["status"] == "cancelled"
    stopped = checkpoints.read_state(checkpoints.latest(tmp_path / "run"))["step"]
    assert e.value.step == stopped and 3 <= stopped < 400
    summary = tuner.start(examples, resume=True, **args).wait(300)
    assert summary["steps"] == 400 and summary["steps_this_run"] == 400 - stopped
    ours, ref = (
        load_file(tmp_path / "run" / "adapter" / ADAPTER_WEIGHTS),
        load_file(whole["adapter"] + "/" + ADAPTER_WEIGHTS),
    )
    assert max(np.abs(ours[k] - ref[k]).max() for k in ref) <= 1e-6


def test_a_child_process_runs_niced_and_leaves_no_memory_behind(tiny_bundle, examples, tmp_path):
    me = psutil.Process()
    before = me.memory_info().rss
    nice = {}

    def on_step(record):
        if record["type"] == "train" and "child" not in nice:
            nice["child"] = psutil.Process(job.pid).nice()

    job = Tuner(tiny_bundle("llama"), tmp_path / "run", child_process=True).start(
        examples, on_step=on_step, steps=20, **TINY
    )
    summary = job.wait(300)
    assert job.pid != os.getpid() and summary["steps"] == 20
    assert nice["child"] >= min(19, me.nice() + 10)
    assert not psutil.pid_exists(job.pid) or psutil.Process(job.pid).status() == psutil.STATUS_ZOMBIE
    assert me.memory_info().rss - before < 20 << 20  # ORT's sessions lived and died in the child


def test_bad_examples_are_one_line_errors(tiny_bundle, tmp_path):
    bad = [{"text": "fine"}, {"prompt": "no completion"}]
    for child in (False, True):
        job = Tuner(tiny_bundle("llama"), tmp_path / f"run{child}", child_process=child).start(bad, steps=2, **TINY)
        with pytest.raises(Exception) as e:
            job.wait(120)
        assert 'train.jsonl:2: missing field "completion"' in str(e.value)
        assert job.progress()["status"] == "failed"
        if not child:
            assert isinstance(e.value, DataError)
