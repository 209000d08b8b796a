"""llama.cpp (llama-cpp-python) as a decode contender; runs in .venvs/llama, which has no edgetune.

    .venvs/llama/bin/python benchmarks/llama_child.py child '{"model": GGUF, "prompt": [ids], ...}'
Prints one JSON line, the same fields as benchmarks/decode.py's edgetune child.
"""

import json
import sys
import time

import llama_cpp


def ttft(llm, prompt: list[int]) -> float:
    """Seconds from a fresh context to the first sampled token after `prompt`."""
    llm.reset()
    t0 = time.perf_counter()
    next(llm.generate(prompt, top_k=1, temp=0.0, reset=True))
    return time.perf_counter() - t0


def main() -> None:
    o = json.loads(sys.argv[2])
    started = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=o["model"],
        n_ctx=o["n_ctx"],
        n_batch=512,
        n_threads=o["threads"],
        n_threads_batch=o["threads"],
        seed=0,
        verbose=False,
    )
    load_s = time.perf_counter() - started
    prompt, new = o["prompt"][: o["prompt_tokens"]], o["new_tokens"]
    ttft(llm, prompt[:16])  # warm-up
    stamps, tokens = [], []
    t0 = time.perf_counter()
    for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        stamps.append(time.perf_counter())
        tokens.append(int(token))
        if len(tokens) == new:
            break
    result = {
        "impl": "llama.cpp",
        "version": llama_cpp.__version__,
        "load_s": load_s,
        "ttft_s": stamps[0] - t0,
        "decode_tokens_per_s": (len(tokens) - 1) / (stamps[-1] - stamps[0]),
        "tokens": tokens,
        "ttft_by_prompt": {str(n): ttft(llm, o["prompt"][:n]) for n in o["ttft_prompts"]},
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
