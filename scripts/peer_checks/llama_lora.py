"""Greedy tokens and logits of a GGUF model in llama.cpp (llama-cpp-python), with or without a GGUF LoRA adapter.

Runs in .venvs/llama:
    python scripts/peer_checks/llama_lora.py BASE.gguf --ids 1,40,50 [--lora ADAPTER.gguf] [--tokens 16]
Prints one JSON object: `tokens` (greedy, argmax of the logits, no sampler) and `logits`
(the prompt's last position). The KV cache is float32 (type_k/type_v 0), so a float32 base
is compared without fp16 cache rounding.
"""

import argparse
import json

import llama_cpp
import numpy as np

F32 = 0  # GGML_TYPE_F32


def main() -> None:
    """Decode --tokens tokens greedily after --ids."""
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--ids", required=True, help="comma-separated prompt token ids")
    parser.add_argument("--lora", default=None)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    ids = [int(i) for i in args.ids.split(",")]
    extra = {"lora_path": args.lora} if args.lora else {}
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=len(ids) + args.tokens + 8,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        logits_all=True,
        type_k=F32,
        type_v=F32,
        seed=0,
        verbose=False,
        **extra,
    )
    llm.eval(ids)
    logits = np.array(llm.scores[llm.n_tokens - 1], np.float32)
    tokens = []
    for _ in range(args.tokens):
        tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([tokens[-1]])
    print(json.dumps({"llama_cpp": llama_cpp.__version__, "tokens": tokens, "logits": logits.tolist()}))


if __name__ == "__main__":
    main()
