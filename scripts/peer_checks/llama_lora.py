"""Greedy tokens and logits of a GGUF model in llama.cpp (llama-cpp-python), with or without a GGUF LoRA adapter.

Runs in .venvs/llama:
    python scripts/peer_checks/llama_lora.py BASE.gguf --ids 1,40,50 [--lora ADAPTER.gguf] [--tokens 16]
    python scripts/peer_checks/llama_lora.py BASE.gguf --ids-file PROMPTS.json [--lora ...]
Prints one JSON object: `tokens` (greedy, argmax of the logits, no sampler) and `logits`
(the prompt's last position); with --ids-file (a JSON list of id lists), `tokens` is a list
per prompt and no logits are printed. The KV cache is float32 (type_k/type_v 0), so a float32 base
is compared without fp16 cache rounding.
"""

import argparse
import json

import llama_cpp
import numpy as np

F32 = 0  # GGML_TYPE_F32


def greedy(llm: llama_cpp.Llama, ids: list[int], tokens: int) -> tuple[list[int], np.ndarray]:
    """`tokens` greedy tokens after `ids` from a fresh cache, and the prompt's last logits (V,)."""
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[llm.n_tokens - 1], np.float32)
    out = []
    for _ in range(tokens):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out, logits


def main() -> None:
    """Decode --tokens tokens greedily after each prompt."""
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--ids", default=None, help="comma-separated prompt token ids")
    parser.add_argument("--ids-file", default=None, help="a JSON list of prompts' token ids")
    parser.add_argument("--lora", default=None)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.ids_file:
        with open(args.ids_file) as f:
            prompts = json.load(f)
    else:
        prompts = [[int(i) for i in args.ids.split(",")]]
    extra = {"lora_path": args.lora} if args.lora else {}
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=max(map(len, prompts)) + args.tokens + 8,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        logits_all=True,
        type_k=F32,
        type_v=F32,
        seed=0,
        verbose=False,
        **extra,
    )
    results = [greedy(llm, ids, args.tokens) for ids in prompts]
    if args.ids_file:
        print(json.dumps({"llama_cpp": llama_cpp.__version__, "tokens": [tokens for tokens, _ in results]}))
    else:
        tokens, logits = results[0]
        print(json.dumps({"llama_cpp": llama_cpp.__version__, "tokens": tokens, "logits": logits.tolist()}))


if __name__ == "__main__":
    main()
