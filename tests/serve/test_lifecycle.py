"""Clients that leave, and SIGTERM: slots are freed, streams end cleanly, the process exits 0."""

import json
import signal
import socket
import time
import urllib.parse

import openai
import pytest


def _metric(server, name: str) -> float:
    text = server.get("/metrics")[1]
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def _wait_until(predicate, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _raw_request(server, body: dict) -> socket.socket:
    """Send a completion request on a raw socket (to hang up on it)."""
    url = urllib.parse.urlparse(server.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    data = json.dumps(body).encode()
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
    sock.sendall(head.encode() + b"\r\n\r\n" + data)
    return sock


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    return received


LONG = 4000  # greedy tokens of the long-context tiny model: no end-of-text among them


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_frees_its_slot(long_bundle, live, stream):
    server = live(long_bundle, "--model-name", "base", "--max-tokens-limit", str(LONG))
    body = {"model": "base", "prompt": "the", "max_tokens": LONG, "stream": stream, "temperature": 0}
    sock = _raw_request(server, body)
    if stream:
        _read_until(sock, b"data: ")  # the stream has begun
    else:
        assert _wait_until(lambda: server.get("/health")[1]["requests"] == 1)
    sock.close()
    assert _wait_until(lambda: _metric(server, 'edgetune_generations_total{reason="cancelled"}') == 1)
    assert server.get("/health")[1]["requests"] == 0
    assert _metric(server, "edgetune_completion_tokens_total") < LONG


def test_sigterm_mid_stream_finishes_the_stream_and_exits_0(served, live):
    bundle, _ = served
    server = live(bundle, "--model-name", "base", "--max-tokens-limit", "250")
    c = openai.OpenAI(base_url=server.v1, api_key="none", max_retries=0, timeout=60)
    stream = c.completions.create(model="base", prompt="the", max_tokens=250, stream=True, temperature=0)
    chunks = iter(stream)
    first = next(chunks)
    server.proc.send_signal(signal.SIGTERM)
    rest = list(chunks)  # raises if the stream broke
    text = first.choices[0].text + "".join(ch.choices[0].text for ch in rest)
    assert rest[-1].choices[0].finish_reason in ("length", "stop") and text
    assert server.proc.wait(60) == 0
    with pytest.raises(openai.APIConnectionError):
        c.models.list()


def test_sigterm_past_the_drain_timeout_ends_streams_with_an_error_chunk(served, live):
    bundle, _ = served
    server = live(bundle, "--model-name", "base", "--max-tokens-limit", "250", "--drain-timeout", "0")
    sock = _raw_request(server, {"model": "base", "prompt": "the", "max_tokens": 250, "stream": True})
    received = _read_until(sock, b"data: ")
    server.proc.send_signal(signal.SIGTERM)
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    events = [line[6:] for line in received.decode().splitlines() if line.startswith("data: ")]
    assert json.loads(events[-1])["error"]["code"] == "shutting_down"
    assert server.proc.wait(60) == 0
