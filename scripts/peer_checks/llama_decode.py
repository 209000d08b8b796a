"""Greedy chat decoding of a GGUF model with llama.cpp (llama-cpp-python), timed.

Runs in .venvs/llama:  python scripts/peer_checks/llama_decode.py MODEL.gguf --tokens 16 --threads 2
Prints one JSON object: version, text, tokens, and decode tokens/s (first token to last,
so the prompt's prefill is left out).
"""

import argparse
import json
import time

import llama_cpp


def main() -> None:
    """Decode --tokens tokens greedily for one chat message."""
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", default="Tell me a long story about a lighthouse keeper.")
    args = parser.parse_args()
    llm = llama_cpp.Llama(
        model_path=args.model, n_ctx=512, n_threads=args.threads, n_threads_batch=args.threads, seed=0, verbose=False
    )
    stamps, pieces = [], []
    stream = llm.create_chat_completion(
        [{"role": "user", "content": args.prompt}], max_tokens=args.tokens, temperature=0.0, stream=True
    )
    for chunk in stream:
        piece = chunk["choices"][0]["delta"].get("content")
        if piece is not None:
            stamps.append(time.perf_counter())
            pieces.append(piece)
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    print(
        json.dumps(
            {
                "llama_cpp": llama_cpp.__version__,
                "text": "".join(pieces),
                "tokens": len(pieces),
                "tokens_per_s": round(rate, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
