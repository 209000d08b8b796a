"""Batching through the HTTP API, and a bounded load test against a small queue."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import psutil

from tests.serve.conftest import ADAPTERS

PROMPTS = ["the quick brown fox", "march april may", "convert the date 1999", "lazy dog jumps", "iso 2021 june"]


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="none", max_retries=0, timeout=120)


def _metric(server, name: str) -> float:
    text = server.get("/metrics")[1]
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_batched_equals_alone_over_three_adapters(served, live):
    """8 concurrent greedy requests over 3 adapters and the base: each answer as when it is served alone."""
    bundle, adapters_dir = served
    flags = [a for name in ADAPTERS for a in ("--adapter", f"{name}={adapters_dir / name}")]
    server = live(bundle, *flags, "--max-batch", "8", "--model-name", "base")
    c = _client(server)
    models = ["base", *ADAPTERS]
    requests = [(models[i % 4], PROMPTS[i % len(PROMPTS)]) for i in range(8)]

    def run(request):
        model, prompt = request
        return c.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0).choices[0].text

    alone = [run(r) for r in requests]
    steps_before = _metric(server, "edgetune_batch_size_count")
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(run, requests))
    assert together == alone
    assert len(set(alone)) > 4  # the adapters really differ
    rows = _metric(server, "edgetune_batch_size_sum") / _metric(server, "edgetune_batch_size_count")
    single = _metric(server, 'edgetune_batch_size_bucket{le="1.0"}')
    assert _metric(server, "edgetune_batch_size_count") - steps_before > single - steps_before or rows > 1


def test_64_streaming_clients_against_a_queue_of_16(served, live):
    """Every request completes or gets 429; RSS stays bounded; /health answers throughout."""
    bundle, _ = served
    server = live(bundle, "--max-batch", "8", "--max-queue", "16", "--model-name", "base", "--max-tokens-limit", "96")
    process = psutil.Process(server.pid)
    c = _client(server)
    c.completions.create(model="base", prompt="warm up", max_tokens=4)
    rss_before = process.memory_info().rss
    outcomes: list[str] = []
    health: list[tuple[int, float]] = []
    rss: list[int] = []
    admitted: list[int] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            started = time.perf_counter()
            status, body = server.get("/health", timeout=10)
            health.append((status, time.perf_counter() - started))
            admitted.append(body["requests"] if status == 200 else -1)
            rss.append(process.memory_info().rss)
            time.sleep(0.05)

    barrier = threading.Barrier(64)

    def stream(i: int) -> str:
        barrier.wait()
        try:
            chunks = list(c.completions.create(model="base", prompt=PROMPTS[i % 5], max_tokens=96, stream=True))
        except openai.RateLimitError as e:
            return "429" if e.body["code"] == "queue_full" else f"other 429: {e}"
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        return f"done:{finish[0]}" if len(finish) == 1 else f"broken: {finish}"

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(64) as pool:
            outcomes = list(pool.map(stream, range(64), timeout=300))
    finally:
        stop.set()
        watcher.join(30)
    elapsed = time.perf_counter() - started
    done = [o for o in outcomes if o.startswith("done:")]
    rejected = outcomes.count("429")
    assert len(done) + rejected == 64, outcomes
    assert len(done) >= 24 and rejected >= 1, (len(done), rejected)  # 8 rows + 16 queued were admitted at once
    assert max(admitted) <= 24
    assert health and all(status == 200 for status, _ in health)
    assert max(t for _, t in health) < 2.0
    growth = max(rss) - rss_before
    assert growth < 200 << 20, f"RSS grew by {growth >> 20} MB"
    print(
        f"64 clients: {len(done)} completed, {rejected} got 429 in {elapsed:.1f} s; "
        f"RSS +{growth >> 20} MB; /health p100 {max(t for _, t in health) * 1000:.0f} ms over {len(health)} polls"
    )
