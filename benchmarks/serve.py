"""`edgetune serve` measured through its HTTP API, with the real `openai` client, on loopback.

    python benchmarks/serve.py [BUNDLE] [--streams 8] [--finetune] [--json]

Decoding (one server, 128-token prompts, 128 new tokens, greedy; side by side in one run):
  - one stream alone vs 8 concurrent streams: aggregate tokens/s and their ratio, time to
    first token p50/p95 at 8 streams;
  - 8 streams on one adapter vs 8 streams over the base and three adapters.
With --finetune: the openai_finetune sample runs (upload -> job -> held-out exact match)
while a client asks for 32-token chat completions one after another; p50/p95 latency
during training against the same requests on the idle server.
The decode engine's own targets are measured at the engine level (`benchmarks/` of the
engine); these are the HTTP figures around them.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from adapter_swap import random_adapters

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.serve.live import LiveServer  # noqa: E402 (the test suite's server process helper)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def stream_once(client: openai.OpenAI, model: str, prompt: list[int], new: int) -> tuple[float, int, float]:
    """(time to first token, completion tokens, wall time) of one streamed greedy completion."""
    started = time.perf_counter()
    first, tokens = None, 0
    stream = client.completions.create(
        model=model, prompt=prompt, max_tokens=new, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - started
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return first or 0.0, tokens, time.perf_counter() - started


def concurrent_streams(client, models: list[str], prompts: list[list[int]], new: int) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(len(models)) as pool:
        results = list(pool.map(lambda a: stream_once(client, *a, new), zip(models, prompts)))
    wall = time.perf_counter() - started
    ttft = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return {
        "streams": len(models),
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p95_s": percentile(ttft, 95),
    }


def decode_figures(client, base: str, adapters: list[str], vocab_ids: list[int], streams: int, new: int) -> dict:
    prompts = [[vocab_ids[(7 * i + j) % len(vocab_ids)] for j in range(128)] for i in range(streams)]
    concurrent_streams(client, [base], prompts[:1], 8)  # warm up
    alone = concurrent_streams(client, [base], prompts[:1], new)
    together = concurrent_streams(client, [adapters[0]] * streams, prompts, new)
    mixed_models = [([base] + adapters)[i % (len(adapters) + 1)] for i in range(streams)]
    mixed = concurrent_streams(client, mixed_models, prompts, new)
    return {
        "one_stream": alone,
        "single_adapter_batch": together,
        "mixed_adapter_batch": mixed,
        "aggregate_vs_one": together["tokens_per_s"] / alone["tokens_per_s"],
        "mixed_vs_single_adapter": mixed["tokens_per_s"] / together["tokens_per_s"],
    }


def chat_latencies(client, model: str, n: int | None = None, until=None, pause: float = 1.0) -> list[float]:
    """Seconds per 32-token chat completion, one `pause` seconds after the other (n of them, or until `until()`)."""
    times = []
    while (n is not None and len(times) < n) or (until is not None and not until()):
        started = time.perf_counter()
        messages = [{"role": "user", "content": "Tell me about the sea."}]
        client.chat.completions.create(model=model, messages=messages, max_tokens=32, temperature=0)
        times.append(time.perf_counter() - started)
        time.sleep(pause)
    return times


def finetune_figures(server: LiveServer, client, base: str, data: Path) -> dict:
    idle = chat_latencies(client, base, n=20)
    sample = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "samples" / "openai_finetune" / "finetune.py"),
            "--base-url",
            server.v1,
            "--data",
            str(data),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    training = threading.Event()

    def watch_jobs():  # "during training": while a job of the sample is running
        while sample.poll() is None:
            jobs = client.fine_tuning.jobs.list().data
            if jobs and jobs[0].status == "running":
                training.set()
            elif training.is_set():
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=watch_jobs, daemon=True)
    watcher.start()
    while not training.is_set() and sample.poll() is None:
        time.sleep(0.2)
    during = chat_latencies(client, base, until=lambda: not watcher.is_alive())
    out, _ = sample.communicate(timeout=1800)
    summary = json.loads(out.strip().splitlines()[-1])
    return {
        "idle_p50_s": statistics.median(idle),
        "idle_p95_s": percentile(idle, 95),
        "training_p50_s": statistics.median(during),
        "training_p95_s": percentile(during, 95),
        "training_requests": len(during),
        "p95_ratio": percentile(during, 95) / percentile(idle, 95),
        "sample": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", nargs="?", default="artifacts/smollm2")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--finetune", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--job-nice", type=int, default=10, help="the server's --job-nice")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bundle = Path(args.bundle)
    report = {"loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapters = random_adapters(bundle, tmp / "adapters", 3)
        flags = [a for i, p in enumerate(adapters) for a in ("--adapter", f"a{i}={p}")]
        limits = ("--max-batch", str(args.streams), "--max-tokens-limit", "512", "--job-nice", str(args.job_nice))
        with LiveServer(bundle, *flags, *limits, log_dir=tmp) as server:
            client = openai.OpenAI(base_url=server.v1, api_key="none", max_retries=0, timeout=1800)
            base = client.models.list().data[0].id
            vocab_ids = list(range(1000, 9000, 13))  # ordinary tokens, not special ones
            if not args.skip_decode:
                report["decode"] = decode_figures(client, base, ["a0", "a1", "a2"], vocab_ids, args.streams, args.new)
                print(json.dumps(report["decode"]), file=sys.stderr, flush=True)
            if args.finetune:
                sys.path.insert(0, str(ROOT / "samples" / "data"))
                from prepare import prepare

                data = prepare(tmp / "data")["train"].parent
                report["finetune"] = finetune_figures(server, client, base, data)
    report["loadavg_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"load average before {report['loadavg_before']}, after {report['loadavg_after']}")
    d = report.get("decode")
    if d:
        one = d["one_stream"]
        print(f"one stream: {one['tokens_per_s']:.1f} tokens/s, TTFT {one['ttft_p50_s'] * 1e3:.0f} ms")
        for key in ("single_adapter_batch", "mixed_adapter_batch"):
            r = d[key]
            print(
                f"{args.streams} streams ({key}): {r['tokens_per_s']:.1f} tokens/s aggregate, "
                f"TTFT p50 {r['ttft_p50_s'] * 1e3:.0f} ms, p95 {r['ttft_p95_s'] * 1e3:.0f} ms"
            )
        print(
            f"aggregate / one stream: {d['aggregate_vs_one']:.2f}x; mixed / single: {d['mixed_vs_single_adapter']:.2f}x"
        )
    if "finetune" in report:
        f = report["finetune"]
        print(
            f"32-token chat completion: idle p50 {f['idle_p50_s']:.2f} s, p95 {f['idle_p95_s']:.2f} s; during "
            f"training p50 {f['training_p50_s']:.2f} s, p95 {f['training_p95_s']:.2f} s "
            f"({f['training_requests']} requests): p95 ratio {f['p95_ratio']:.2f}x"
        )
        s = f["sample"]
        print(
            f"openai_finetune sample: exact match {s['exact_match_before']:.0%} -> {s['exact_match_after']:.0%}, "
            f"upload -> passing model in {s['upload_to_passing_s']:.0f} s"
        )


if __name__ == "__main__":
    main()
