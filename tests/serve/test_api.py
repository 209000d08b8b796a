"""The real `openai` client against a live `edgetune serve` on a loopback port."""

import shutil
import socket
import urllib.parse

import openai
import pytest

from tests.serve.conftest import make_adapter

KEY = "test-key-123"


def client(server, key=KEY, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=key, max_retries=0, timeout=60, **kwargs)


@pytest.fixture
def server(served, live):
    bundle, adapters_dir = served
    return live(
        bundle,
        "--adapter",
        f"alpha={adapters_dir / 'alpha'}",
        "--adapters-dir",
        adapters_dir,
        "--api-key",
        KEY,
        "--max-tokens-limit",
        "64",
        "--model-name",
        "tiny",
    )


def test_chat_and_completions_whole_and_streamed(server):
    c = client(server)
    chat = c.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "the quick fox"}], max_tokens=12, temperature=0
    )
    choice = chat.choices[0]
    assert chat.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and chat.model == "tiny"
    assert chat.usage.completion_tokens <= 12 and chat.usage.prompt_tokens > 3
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

    stream = c.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "the quick fox"}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert text == choice.message.content and finishes == [choice.finish_reason]
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens and not chunks[-1].choices

    done = c.completions.create(model="tiny", prompt="the lazy dog", max_tokens=10, temperature=0)
    assert done.object == "text_completion" and done.usage.completion_tokens <= 10
    streamed = c.completions.create(model="tiny", prompt="the lazy dog", max_tokens=10, temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in streamed) == done.choices[0].text


def test_sampling_seed_stop_and_length(server):
    c = client(server)
    args = dict(model="tiny", prompt="march april", max_tokens=16, temperature=1.0, top_p=0.9)
    a = c.completions.create(**args, seed=7).choices[0]
    b = c.completions.create(**args, seed=7).choices[0]
    assert a.text == b.text  # the same seed, the same draw
    greedy = c.completions.create(model="tiny", prompt="march april", max_tokens=16, temperature=0).choices[0]
    assert greedy.finish_reason == "length"
    stop = greedy.text[4:6]
    cut = c.completions.create(model="tiny", prompt="march april", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == greedy.text[: greedy.text.index(stop)]


def test_two_adapters_and_the_base_interleaved(server, served):
    c = client(server)
    assert c.post("/adapters", body={"name": "beta", "path": "beta"}, cast_to=object)["id"] == "beta"
    ids = [m.id for m in c.models.list().data]
    assert ids == ["tiny", "alpha", "beta"]
    prompt = "the quick brown fox"

    def answer(model):
        return c.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0).choices[0].text

    first = {m: answer(m) for m in ("tiny", "alpha", "beta")}
    assert len(set(first.values())) == 3  # each adapter changes the answer
    for model in ("beta", "tiny", "alpha", "beta", "alpha", "tiny"):
        assert answer(model) == first[model]


def test_a_folded_adapter_is_served_from_the_folded_weights_and_kept(served, live):
    """--fold alpha: alpha's answers are the engine's with alpha folded (int8 requantized), the base model's
    unchanged; with one adapter slot, another adapter is refused rather than evicting the folded one."""
    from edgetune.runtime.engine import Engine

    bundle, adapters_dir = served
    flags = ("--adapter", f"alpha={adapters_dir / 'alpha'}", "--fold", "alpha", "--max-adapters", "1")
    server = live(bundle, *flags, "--adapters-dir", adapters_dir, "--model-name", "tiny")
    c = client(server)
    prompt = "the quick brown fox"
    engine = Engine(bundle)
    engine.load_adapter("alpha", adapters_dir / "alpha")
    expected = {"tiny": engine.generate_many([engine.encode(prompt)], max_new_tokens=12)[0]}
    engine.fold_adapter("alpha")
    expected["alpha"] = engine.generate_many([engine.encode(prompt)], "alpha", max_new_tokens=12)[0]

    def answer(model):
        return c.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0).choices[0].text

    assert {model: answer(model) for model in expected} == expected
    status, body = _error(lambda: c.post("/adapters", body={"name": "beta", "path": "beta"}, cast_to=object))
    assert status == 400 and "held by running requests and the folded adapter" in body["message"], body
    assert answer("alpha") == expected["alpha"]


def test_load_and_unload_an_adapter(server, served):
    c = client(server)
    c.post("/adapters", body={"name": "gamma", "path": "gamma"}, cast_to=object)
    assert c.completions.create(model="gamma", prompt="dog", max_tokens=4).choices[0].text is not None
    assert c.delete("/adapters/gamma", cast_to=object)["deleted"] is True
    assert "gamma" not in [m.id for m in c.models.list().data]
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="gamma", prompt="dog", max_tokens=4)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        c.delete("/adapters/gamma", cast_to=object)


def _error(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as e:
        call()
    return e.value.status_code, e.value.body


def test_every_error_code(server, served, tmp_path):
    bundle, adapters_dir = served
    c = client(server)
    msg = [{"role": "user", "content": "hi"}]
    status, body = _error(lambda: client(server, key="wrong").models.list())
    assert status == 401 and body["code"] == "invalid_api_key"
    assert server.get("/v1/models")[0] == 401  # no key at all
    assert server.get("/health")[0] == 200  # health needs none
    cases = [
        (lambda: c.chat.completions.create(model="nope", messages=msg), 404, "model"),
        (lambda: c.chat.completions.create(model="tiny", messages=msg, temperature=3), 400, "temperature"),
        (lambda: c.chat.completions.create(model="tiny", messages=msg, n=2), 400, "n"),
        (lambda: c.chat.completions.create(model="tiny", messages=msg, max_tokens=0), 400, "max_tokens"),
        (lambda: c.chat.completions.create(model="tiny", messages=msg, max_tokens=65), 400, "max_tokens"),
        (
            lambda: c.chat.completions.create(model="tiny", messages=[{"role": "x", "content": "a"}]),
            400,
            "messages[0].role",
        ),
        (lambda: c.chat.completions.create(model="tiny", messages=msg, top_p=0), 400, "top_p"),
        (lambda: c.chat.completions.create(model="tiny", messages=msg, stop=["a"] * 5), 400, "stop"),
        (lambda: c.completions.create(model="tiny", prompt=""), 400, "prompt"),
        (lambda: c.completions.create(model="tiny", prompt="x", seed=-1), 400, "seed"),
    ]
    for call, code, param in cases:
        status, body = _error(call)
        assert (status, body["param"]) == (code, param), body
        assert set(body) == {"message", "type", "param", "code"} and body["message"]
    long_prompt = "the quick brown fox " * 200  # past the tiny model's 256-token context
    status, body = _error(lambda: c.completions.create(model="tiny", prompt=long_prompt, max_tokens=4))
    assert (status, body["code"], body["param"]) == (400, "context_length_exceeded", "prompt")
    status, body = _error(
        lambda: c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": long_prompt}])
    )
    assert (status, body["code"], body["param"]) == (400, "context_length_exceeded", "messages")
    status, text = server.request("POST", "/v1/completions", raw=b"{not json", key=KEY)
    assert status == 400 and "not valid JSON" in text["error"]["message"]
    assert _status_of_big_body(server, 2 << 20) == 413  # refused from its Content-Length, before it is read
    # adapters: outside the folder, a symlink out of it, another base model, a taken name
    outside = make_adapter(bundle, tmp_path / "outside", seed=5)
    (adapters_dir / "link").unlink(missing_ok=True)
    (adapters_dir / "link").symlink_to(outside)
    for path, code in (
        ("../outside", "outside_adapters_dir"),
        (str(outside), "outside_adapters_dir"),
        ("link", "outside_adapters_dir"),
        ("missing", "adapter_not_found"),
    ):
        status, body = _error(lambda p=path: c.post("/adapters", body={"name": "x", "path": p}, cast_to=object))
        assert (status, body["param"], body["code"]) == (400, "path", code), body
    other = make_adapter(bundle, adapters_dir / "other-base", seed=6, base_sha="0" * 64)
    status, body = _error(lambda: c.post("/adapters", body={"name": "x", "path": "other-base"}, cast_to=object))
    assert (status, body["param"]) == (400, "path") and "different base model" in body["message"]
    assert str(adapters_dir) not in body["message"]  # no server paths in answers
    shutil.rmtree(other)
    status, body = _error(lambda: c.post("/adapters", body={"name": "alpha", "path": "beta"}, cast_to=object))
    assert (status, body["param"]) == (409, "name")
    status, body = _error(lambda: c.post("/adapters", body={"name": "../x", "path": "beta"}, cast_to=object))
    assert (status, body["param"]) == (400, "name")
    assert [m.id for m in c.models.list().data] == ["tiny", "alpha"]


def _status_of_big_body(server, size: int) -> int:
    """Announce a body of `size` bytes, send none of it, and read the status the server answers with."""
    url = urllib.parse.urlparse(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        )
        sock.sendall(head.encode())
        return int(sock.recv(4096).split(b" ", 2)[1])


def test_queue_full_is_429_at_once(served, live):
    bundle, _ = served
    flags = ("--max-batch", "1", "--max-queue", "0", "--max-tokens-limit", "200", "--spin", "--no-lean")
    server = live(bundle, *flags)  # threads that spin and no lean session change no answer, only speed
    c = client(server)
    stream = c.completions.create(model=server_model(server), prompt="a", max_tokens=200, stream=True)
    next(iter(stream))  # holds the only row
    status, body = _error(lambda: c.completions.create(model=server_model(server), prompt="b", max_tokens=2))
    assert status == 429 and body["code"] == "queue_full"
    stream.close()


def server_model(server) -> str:
    return server.get("/v1/models")[1]["data"][0]["id"]


def test_binding_another_address_needs_a_key(served, tmp_path):
    import subprocess
    import sys

    bundle, _ = served
    proc = subprocess.run(
        [sys.executable, "-m", "edgetune.cli", "serve", str(bundle), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("edgetune: --host: 0.0.0.0 is reachable from other machines")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_metrics_and_health(served, live):
    bundle, _ = served
    server = live(bundle)
    c = client(server)
    c.completions.create(model=server_model(server), prompt="the dog", max_tokens=5, temperature=0)
    status, text = server.get("/metrics")
    assert status == 200
    for name in (
        "edgetune_requests_total",
        "edgetune_prompt_tokens_total",
        "edgetune_completion_tokens_total",
        "edgetune_queue_depth",
        "edgetune_batch_size_bucket",
        "edgetune_request_seconds_bucket",
        "edgetune_time_to_first_token_seconds_bucket",
    ):
        assert name in text, name
    completed = [line for line in text.splitlines() if line.startswith("edgetune_completion_tokens_total")]
    assert float(completed[0].split()[-1]) == 5
    assert server.get("/health") == (200, {"status": "ok", "requests": 0, "limit": 72, "model": server_model(server)})
