"""OpenAI's files and fine_tuning.jobs endpoints with the real `openai` client, on the tiny bundle."""

import io
import json
import resource
import signal
import time

import openai
import pytest

from tests.tiny_models import sample_text


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="none", max_retries=0, timeout=120)


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _pairs(n=32, seed=4) -> list[dict]:
    return [{"prompt": t[:10], "completion": t[10:]} for t in sample_text(n, seed=seed)]


def _chats(n=8) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": t[:10]}, {"role": "assistant", "content": t[10:]}]}
        for t in sample_text(n, seed=5)
    ]


def _error(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as e:
        call()
    return e.value.status_code, e.value.body


def _wait_for_status(c, job_id, statuses=("succeeded", "failed", "cancelled"), timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.status}")


def test_files_upload_list_get_content_delete_and_bad_input(served, live, tmp_path):
    bundle, _ = served
    server = live(bundle, "--model-name", "base")
    c = _client(server)
    pairs = c.files.create(file=("pairs.jsonl", io.BytesIO(_jsonl(_pairs()))), purpose="fine-tune")
    chats = c.files.create(file=("chats.jsonl", io.BytesIO(_jsonl(_chats()))), purpose="fine-tune")
    assert pairs.object == "file" and pairs.filename == "pairs.jsonl" and pairs.bytes == len(_jsonl(_pairs()))
    assert {f.id for f in c.files.list().data} == {pairs.id, chats.id}
    assert c.files.retrieve(chats.id).purpose == "fine-tune"
    assert c.files.content(pairs.id).content == _jsonl(_pairs())
    assert c.files.delete(chats.id).deleted is True
    assert [f.id for f in c.files.list().data] == [pairs.id]

    bad = _jsonl(_pairs(3)) + b'{"prompt": "x"}\n'
    status, body = _error(lambda: c.files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="fine-tune"))
    assert (status, body["param"], body["code"]) == (400, "file", "invalid_training_file")
    assert body["message"] == 'bad.jsonl:4: missing field "completion"'
    broken = b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]}\n'
    status, body = _error(lambda: c.files.create(file=("b.jsonl", io.BytesIO(broken)), purpose="fine-tune"))
    assert status == 400 and body["message"] == 'b.jsonl:1: messages[1]: missing field "content"'
    status, body = _error(lambda: c.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="nope"))
    assert (status, body["param"]) == (400, "purpose")
    status, body = _error(lambda: c.files.retrieve("file-nope"))
    assert (status, body["code"]) == (404, "file_not_found")
    assert len(c.files.list().data) == 1
    assert sorted(p.name for p in (tmp_path / "state" / "edgetune" / "files").iterdir()) == [f"{pairs.id}.jsonl"]


def test_a_full_disk_during_upload_leaves_nothing_behind(served, live, tmp_path):
    bundle, _ = served
    limit = 4 << 20  # the server may write no file past 4 MiB (RLIMIT_FSIZE): a disk that fills up
    server = live(
        bundle, "--model-name", "base", preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    )
    c = _client(server)
    big = _jsonl([{"text": "the quick brown fox " * 50}] * 6000)  # ~6 MB
    status, body = _error(lambda: c.files.create(file=("big.jsonl", io.BytesIO(big)), purpose="fine-tune"))
    assert (status, body["code"], body["param"]) == (507, "insufficient_storage", "file")
    assert c.files.list().data == []
    files = tmp_path / "state" / "edgetune" / "files"
    assert list(files.iterdir()) == []  # no temporary file left either
    small = c.files.create(file=("ok.jsonl", io.BytesIO(_jsonl(_pairs()))), purpose="fine-tune")
    assert [f.id for f in c.files.list().data] == [small.id]


def test_a_job_trains_and_its_model_is_served_at_once(served, live):
    bundle, _ = served
    server = live(bundle, "--model-name", "base")
    c = _client(server)
    train = c.files.create(file=("t.jsonl", io.BytesIO(_jsonl(_pairs()))), purpose="fine-tune")
    valid = c.files.create(file=("v.jsonl", io.BytesIO(_jsonl(_pairs(8, seed=9)))), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(
        model="base",
        training_file=train.id,
        validation_file=valid.id,
        suffix="tiny",
        hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 5},
    )
    assert job.status == "queued" and job.hyperparameters.n_epochs == 3
    job = _wait_for_status(c, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("ft:base:tiny:") and job.trained_tokens > 0
    assert job.fine_tuned_model in [m.id for m in c.models.list().data]
    answer = c.completions.create(model=job.fine_tuned_model, prompt="the quick", max_tokens=8, temperature=0)
    base = c.completions.create(model="base", prompt="the quick", max_tokens=8, temperature=0)
    assert answer.choices[0].text != base.choices[0].text
    events = c.fine_tuning.jobs.list_events(job.id, limit=1000).data
    steps = [e.data["step"] for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert sorted(steps) == list(range(1, 25)) and any("valid_loss" in e.data for e in events)
    assert events[0].message.startswith("The job has successfully completed")
    checkpoints = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints[0].step_number == 24 and checkpoints[0].fine_tuning_job_id == job.id
    assert [j.id for j in c.fine_tuning.jobs.list().data] == [job.id]
    status, body = _error(lambda: c.fine_tuning.jobs.cancel(job.id))
    assert (status, body["code"]) == (400, "job_not_cancellable")


def test_job_bad_input(served, live):
    bundle, _ = served
    server = live(bundle, "--model-name", "base")
    c = _client(server)
    train = c.files.create(file=("t.jsonl", io.BytesIO(_jsonl(_pairs()))), purpose="fine-tune")
    other = c.files.create(file=("b.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    create = c.fine_tuning.jobs.create
    cases = [
        (lambda: create(model="base", training_file="file-nope"), 400, "training_file"),
        (lambda: create(model="base", training_file=other.id), 400, "training_file"),
        (lambda: create(model="base", training_file=train.id, validation_file="file-x"), 400, "validation_file"),
        (lambda: create(model="other", training_file=train.id), 404, "model"),
        (
            lambda: create(model="base", training_file=train.id, hyperparameters={"n_epochs": 0}),
            400,
            "hyperparameters.n_epochs",
        ),
        (
            lambda: create(model="base", training_file=train.id, hyperparameters={"batch_size": 1000}),
            400,
            "hyperparameters.batch_size",
        ),
        (
            lambda: create(model="base", training_file=train.id, hyperparameters={"learning_rate_multiplier": -1}),
            400,
            "hyperparameters.learning_rate_multiplier",
        ),
        (lambda: create(model="base", training_file=train.id, suffix="no spaces"), 400, "suffix"),
        (lambda: c.fine_tuning.jobs.retrieve("ftjob-nope"), 404, "fine_tuning_job_id"),
    ]
    for call, code, param in cases:
        status, body = _error(call)
        assert (status, body["param"]) == (code, param), body
    status, body = _error(lambda: create(model="base", training_file=other.id))
    assert body["code"] == "invalid_file_purpose"
    assert c.fine_tuning.jobs.list().data == []


def test_sigkill_during_a_job_resumes_from_its_checkpoint(served, live, tmp_path):
    bundle, _ = served
    args = (bundle, "--model-name", "base")
    server = live(*args)
    c = _client(server)
    train = c.files.create(file=("t.jsonl", io.BytesIO(_jsonl(_pairs()))), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(
        model="base", training_file=train.id, hyperparameters={"n_epochs": 40, "batch_size": 4}
    )  # 320 steps
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = [e.data["step"] for e in c.fine_tuning.jobs.list_events(job.id, limit=5).data if e.type == "metrics"]
        if done and max(done) >= 15:
            break
        time.sleep(0.1)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    restarted = live(*args)  # the same state folder (XDG_STATE_HOME under tmp_path)
    c = _client(restarted)
    assert [f.id for f in c.files.list().data] == [train.id]
    final = _wait_for_status(c, job.id)
    assert final.status == "succeeded", final.error
    events = c.fine_tuning.jobs.list_events(job.id, limit=1000).data
    resumed = [e.message for e in events if e.message.startswith("The server restarted")]
    assert len(resumed) == 1
    step = int(resumed[0].rsplit(" ", 1)[1])
    assert step >= 10 and step % 10 == 0  # from the last checkpoint (every 10 steps)
    train_steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert set(train_steps) == set(range(1, 321))
    assert c.completions.create(model=final.fine_tuned_model, prompt="the", max_tokens=4).choices[0].text is not None


def test_jobs_run_one_at_a_time_and_a_running_job_can_be_cancelled(served, live):
    bundle, _ = served
    server = live(bundle, "--model-name", "base")
    c = _client(server)
    train = c.files.create(file=("t.jsonl", io.BytesIO(_jsonl(_pairs()))), purpose="fine-tune")
    long = c.fine_tuning.jobs.create(model="base", training_file=train.id, hyperparameters={"n_epochs": 50})
    short = c.fine_tuning.jobs.create(model="base", training_file=train.id, hyperparameters={"n_epochs": 1})
    _wait_for_status(c, long.id, ("running",))
    deadline = time.monotonic() + 60
    while not [e for e in c.fine_tuning.jobs.list_events(long.id, limit=3).data if e.type == "metrics"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert c.fine_tuning.jobs.retrieve(short.id).status == "queued"  # one at a time
    cancelled = c.fine_tuning.jobs.cancel(long.id)
    assert cancelled.status == "cancelled"
    assert _wait_for_status(c, short.id).status == "succeeded"
    events = [e.message for e in c.fine_tuning.jobs.list_events(long.id, limit=1000).data]
    assert "The job was cancelled" in events
    long_final = c.fine_tuning.jobs.retrieve(long.id)
    assert long_final.status == "cancelled" and long_final.fine_tuned_model is None
    assert [m.id for m in c.models.list().data] == ["base", c.fine_tuning.jobs.retrieve(short.id).fine_tuned_model]
