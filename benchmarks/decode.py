"""Decode: batch 1, a 128-token prompt, 128 new tokens, greedy. edgetune Generator vs transformers.

EOS is disabled on both sides so that both always produce exactly `new_tokens` tokens
(edgetune: the Generator's EOS set is emptied; transformers: min_new_tokens). Each child
first runs one short warm-up generation, then the timed one:
    time to first token (TTFT) = prompt in -> first new token out (prefill + one sample)
    decode tokens/s            = (new_tokens - 1) / (time from first to last token)
"""

import sys
import time

import children
import workloads


def run_edgetune(o: dict) -> dict:
    """`Generator._tokens` (the iterator `generate_ids` consumes) timed token by token."""
    from edgetune.runtime.generate import Generator
    from edgetune.runtime.sampling import Sampler, SamplingParams

    started = time.perf_counter()
    g = Generator(o["bundle"])
    g.eos_token_ids = frozenset()  # always decode new_tokens tokens
    load_s = time.perf_counter() - started
    prompt = workloads.text_tokens(o["prompt_tokens"])
    list(g._tokens(prompt, 8, Sampler(SamplingParams())))  # warm-up
    t0 = time.perf_counter()
    tokens = g._tokens(prompt, o["new_tokens"], Sampler(SamplingParams()))
    out = [next(tokens)]
    t1 = time.perf_counter()
    out += list(tokens)
    t2 = time.perf_counter()
    return _report(out, t0, t1, t2, load_s)


def run_transformers(o: dict) -> dict:
    """`model.generate(do_sample=False)` with a streamer that stamps the first new token."""
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
    torch.set_num_threads(o.get("threads", 2))
    model = AutoModelForCausalLM.from_pretrained(o["model"], dtype=torch.float32).eval()
    load_s = time.perf_counter() - started
    ids = torch.tensor([workloads.text_tokens(o["prompt_tokens"])])
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, **kwargs)  # warm-up
        stamp = Stamp()
        t0 = time.perf_counter()
        out = model.generate(
            ids, max_new_tokens=o["new_tokens"], min_new_tokens=o["new_tokens"], streamer=stamp, **kwargs
        )
        t2 = time.perf_counter()
    return _report(out[0, ids.shape[1] :].tolist(), t0, stamp.calls[1], t2, load_s)


def _report(tokens: list, t0: float, t_first: float, t_end: float, load_s: float) -> dict:
    return {
        "ttft_s": t_first - t0,
        "decode_tokens_per_s": (len(tokens) - 1) / (t_end - t_first),
        "new_tokens": len(tokens),
        "total_s": t_end - t0,
        "load_s": load_s,
        "tokens": tokens,
    }


def measure(
    bundle, model_dir, rounds: int, prompt_tokens: int = 128, new_tokens: int = 128, spin: bool = False
) -> dict:
    """Alternate edgetune and transformers `rounds` times; medians per contender."""
    base = {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens}
    points = {
        "edgetune": {"impl": "edgetune", "bundle": str(bundle), **base},
        "transformers": {"impl": "transformers", "model": str(model_dir), "env": children.NO_SPIN, **base},
    }

    def one(name, options):
        run = children.run_child(children.child_cmd("decode.py", options), timeout=900, env=options.get("env"))
        if run["error"]:
            children.log(f"  {name} failed: {run['error']}")
        return run

    runs = children.alternate(points, rounds, one)
    if spin:
        children.log("  reference: transformers with OpenMP spin-waiting (the default), one run")
        runs["transformers_spin"] = [one("transformers_spin", {**points["transformers"], "env": None})]
    summary = {}
    for name, results in runs.items():
        ok = [
            r["result"] | {"peak_rss_bytes": r["peak_rss_bytes"], "loadavg_1min": sum(r["loadavg"]) / 2}
            for r in results
            if r["result"]
        ]
        if not ok:
            summary[name] = {"error": results[0]["error"]}
            continue
        summary[name] = {
            k: children.median([r[k] for r in ok])
            for k in ("ttft_s", "decode_tokens_per_s", "total_s", "load_s", "peak_rss_bytes", "loadavg_1min")
        }
        summary[name]["runs_decode_tokens_per_s"] = [r["decode_tokens_per_s"] for r in ok]
        summary[name]["tokens"] = ok[0]["tokens"]
    tokens = {name: s.pop("tokens", None) for name, s in summary.items()}
    a, b = tokens.get("edgetune"), tokens.get("transformers")
    if a and b:  # greedy parity: the same tokens from the same weights?
        summary["same_prefix_tokens"] = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return summary


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    children.child_main({"edgetune": run_edgetune, "transformers": run_transformers})
