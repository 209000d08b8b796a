"""Decode, side by side: llama.cpp on the GGUF, transformers, edgetune's engine on fp32 / int8 / int4 serving graphs.

Every contender runs in its own child (peak RSS is its own), greedy, EOS ignored, on the same
real-text token ids (SmolLM2's tokenizer), with the same thread count:
    ttft_s, decode_tokens_per_s   batch 1: a 128-token prompt, then `new_tokens` tokens
                                  (tokens/s = (new - 1) / (last token - first token))
    ttft_by_prompt                time to the first token after 128 / 512 / 2048-token prompts
    streams8_tokens_per_s         8 sequences decoding together (128-token prompts, 64 new each):
                                  all new tokens / time from the first decode step to the last
    streams8_ttft_p50/p95_s       first-token latency of 8 requests that arrive together
    mixed_adapters_ratio          (edgetune) 8 streams over {base, a1, a2} vs all on a1
    adapter_decode_tokens_per_s   (edgetune) batch 1 with adapter a1 (the full graph; base rows run on the lean one)
Contenders named `...-spin` run the engine with spin-waiting threads, as llama.cpp's are.
llama-cpp-python decodes one sequence per context, so llama.cpp has no 8-stream figure.
"""

import statistics
import sys
import time

import children
import workloads

TTFT_PROMPTS = (128, 512, 2048)


def _eight_streams(engine, prompts, adapters, new_tokens: int) -> dict:
    """Add 8 requests at once; aggregate decode tokens/s and each request's first-token latency."""
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add(f"s{i}", prompt, adapter=adapters[i % len(adapters)], max_new_tokens=new_tokens)
    first, count, decode_start = {}, 0, None
    while engine.has_work:
        events = engine.step()
        now = time.perf_counter()
        for e in events:
            first.setdefault(e.request_id, now - t0)
        if len(first) >= len(prompts) and decode_start is None:
            decode_start, count = now, 0
            continue
        count += len(events)
    ttfts = sorted(first.values())
    return {
        "tokens_per_s": count / (time.perf_counter() - decode_start),
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p95_s": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
    }


def _batch_one(engine, prompt, new_tokens: int, adapter=None) -> tuple[float, list, list]:
    """One request alone: (start time, each token's time stamp, the tokens)."""
    engine.add("b1", prompt, adapter=adapter, max_new_tokens=new_tokens)
    t0, stamps, tokens = time.perf_counter(), [], []
    while engine.has_work:
        for e in engine.step():
            stamps.append(time.perf_counter())
            tokens.append(e.token_id)
    return t0, stamps, tokens


def run_edgetune(o: dict) -> dict:
    """The Engine on one serving graph: batch 1, TTFT by prompt length, 8 streams, mixed adapters."""
    from edgetune.runtime.engine import Engine

    started = time.perf_counter()
    engine = Engine(o["bundle"], max_batch=8, capacity=o.get("capacity"), spin=o.get("spin", False))
    engine.files.eos_token_ids = frozenset()  # always decode new_tokens tokens
    load_s = time.perf_counter() - started
    text = o["prompt"]
    prompt = text[: o["prompt_tokens"]]
    engine.generate_many([prompt[:16]], max_new_tokens=4)  # warm-up
    t0, stamps, tokens = _batch_one(engine, prompt, o["new_tokens"])
    ttft_by_prompt = {}
    for n in o["ttft_prompts"]:  # prompts over prefill_chunk (512) take a chunk per step
        engine.add(f"t{n}", text[:n], max_new_tokens=1)
        t = time.perf_counter()
        while not any(e.request_id == f"t{n}" for e in engine.step()):
            pass
        ttft_by_prompt[str(n)] = time.perf_counter() - t
    prompts = [text[i * 64 : i * 64 + o["prompt_tokens"]] for i in range(8)]
    result = {
        "load_s": load_s,
        "ttft_s": stamps[0] - t0,
        "decode_tokens_per_s": (len(tokens) - 1) / (stamps[-1] - stamps[0]),
        "tokens": tokens,
        "ttft_by_prompt": ttft_by_prompt,
    }
    streams = _eight_streams(engine, prompts, [None], o["stream_tokens"])
    result |= {f"streams8_{k}": v for k, v in streams.items()}
    if o.get("adapters"):
        for i, path in enumerate(o["adapters"]):
            engine.load_adapter(f"a{i}", path)
        single = _eight_streams(engine, prompts, ["a0"], o["stream_tokens"])
        mixed = _eight_streams(engine, prompts, [None, "a0", "a1"], o["stream_tokens"])
        _, stamps, tokens = _batch_one(engine, prompt, o["new_tokens"], "a0")
        result |= {
            "adapter_decode_tokens_per_s": (len(tokens) - 1) / (stamps[-1] - stamps[0]),
            "single_adapter_tokens_per_s": single["tokens_per_s"],
            "mixed_adapters_tokens_per_s": mixed["tokens_per_s"],
            "mixed_adapters_ratio": mixed["tokens_per_s"] / single["tokens_per_s"],
        }
    return result


def run_transformers(o: dict) -> dict:
    """`generate(do_sample=False)` timed with a streamer; TTFT as a 1-token generate; a batch of 8."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    class Stamp(BaseStreamer):
        def __init__(self):
            self.calls = []

        def put(self, value):  # first call: the prompt; then one call per new token
            self.calls.append(time.perf_counter())

        def end(self):
            pass

    started = time.perf_counter()
    torch.set_num_threads(o["threads"])
    model = AutoModelForCausalLM.from_pretrained(o["model"], dtype=torch.float32).eval()
    load_s = time.perf_counter() - started
    text = o["prompt"]
    ids = torch.tensor([text[: o["prompt_tokens"]]])
    kwargs = dict(do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids[:, :16], max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up
        stamp = Stamp()
        t0 = time.perf_counter()
        out = model.generate(
            ids, max_new_tokens=o["new_tokens"], min_new_tokens=o["new_tokens"], streamer=stamp, **kwargs
        )
        t2 = time.perf_counter()
        ttft_by_prompt = {}
        for n in o["ttft_prompts"]:
            t = time.perf_counter()
            model.generate(torch.tensor([text[:n]]), max_new_tokens=1, **kwargs)
            ttft_by_prompt[str(n)] = time.perf_counter() - t
        batch = torch.tensor([text[i * 64 : i * 64 + o["prompt_tokens"]] for i in range(8)])
        n = o["stream_tokens"]
        model.generate(batch, max_new_tokens=1, **kwargs)  # the batch's prefill, to subtract
        t = time.perf_counter()
        model.generate(batch, max_new_tokens=1, **kwargs)
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(batch, max_new_tokens=n, min_new_tokens=n, **kwargs)
        streams = 8 * (n - 1) / (time.perf_counter() - t - prefill)
    tokens = out[0, ids.shape[1] :].tolist()
    return {
        "load_s": load_s,
        "ttft_s": stamp.calls[1] - t0,
        "decode_tokens_per_s": (len(tokens) - 1) / (t2 - stamp.calls[1]),
        "tokens": tokens,
        "ttft_by_prompt": ttft_by_prompt,
        "streams8_tokens_per_s": streams,
    }


def contenders(
    bundles: dict, model_dir, gguf, adapters: list, threads: int = 2, ttft_prompts=TTFT_PROMPTS, spin: bool = False
) -> dict:
    """Child options per contender; `bundles`: name -> SmolLM2 bundle with that serving graph (and, with
    `spin`, the same again with spin-waiting threads)."""
    base = {
        "prompt": workloads.text_tokens(max(ttft_prompts) + 8 * 64),
        "prompt_tokens": 128,
        "new_tokens": 128,
        "stream_tokens": 64,
        "ttft_prompts": list(ttft_prompts),
        "threads": threads,
    }
    points = {
        "llama.cpp": {
            "cmd": [children.ROOT / ".venvs/llama/bin/python", children.ROOT / "benchmarks/llama_child.py"],
            "model": str(gguf),
            "n_ctx": 4096,
            **base,
        },
        "transformers": {"impl": "transformers", "model": str(model_dir), "env": children.NO_SPIN, **base},
    }
    for name, bundle in bundles.items():
        points[f"edgetune-{name}"] = {"impl": "edgetune", "bundle": str(bundle), "adapters": adapters, **base}
        if spin:
            points[f"edgetune-{name}-spin"] = points[f"edgetune-{name}"] | {"spin": True}
    return points


def measure(points: dict, rounds: int) -> dict:
    """Alternate the contenders `rounds` times; medians per contender."""

    def one(name, options):
        cmd = options.get("cmd")
        clean = {k: v for k, v in options.items() if k not in ("cmd", "env")}
        cmd = [*cmd, "child", __import__("json").dumps(clean)] if cmd else children.child_cmd("decode.py", clean)
        run = children.run_child(cmd, timeout=1800, env=options.get("env"))
        if run["error"]:
            children.log(f"  {name} failed: {run['error']}")
        return run

    runs = children.alternate(points, rounds, one)
    summary = {}
    for name, results in runs.items():
        ok = [
            r["result"] | {"peak_rss_bytes": r["peak_rss_bytes"], "loadavg": r["loadavg"]}
            for r in results
            if r["result"]
        ]
        if not ok:
            summary[name] = {"error": results[0]["error"]}
            continue
        figures = {k: children.median([r.get(k) for r in ok]) for k in ok[0] if isinstance(ok[0][k], (int, float))}
        figures["ttft_by_prompt"] = {
            n: children.median([r["ttft_by_prompt"][n] for r in ok]) for n in ok[0]["ttft_by_prompt"]
        }
        figures["runs_decode_tokens_per_s"] = [r["decode_tokens_per_s"] for r in ok]
        figures["loadavg"] = ok[0]["loadavg"]
        figures["tokens"] = ok[0]["tokens"]
        summary[name] = figures
    return summary


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    children.child_main({"edgetune": run_edgetune, "transformers": run_transformers})
