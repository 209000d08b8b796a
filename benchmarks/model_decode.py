"""Greedy decode of a bundle's with-past graph beside transformers on the GGUF it was built from.

    python benchmarks/model_decode.py BUNDLE MODEL.gguf [--new-tokens 64]

Both run without adapter, fp32, 2 threads, in this one process, one after the other, on
the same prompt ids; each is warmed up with 4 tokens first. Prints tokens/s and the ratio.
"""

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from edgetune.runtime.generate import Generator

PROMPT = "The history of the printing press begins in"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    n = args.new_tokens

    generator = Generator(args.bundle)
    ids = generator.encode(PROMPT)
    generator.generate_ids(ids, 4)
    start = time.perf_counter()
    ours = len(generator.generate_ids(ids, n))
    ours_s = time.perf_counter() - start
    print(f"edgetune (with-past graph, fp32): {ours} tokens in {ours_s:.2f} s = {ours / ours_s:.1f} tokens/s")

    model = AutoModelForCausalLM.from_pretrained(args.gguf.parent, gguf_file=args.gguf.name, dtype=torch.float32)
    x = torch.tensor([ids])  # (1, S)
    with torch.no_grad():
        model.eval().generate(x, max_new_tokens=4, do_sample=False)
        start = time.perf_counter()
        theirs = model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False).shape[1] - len(ids)
        theirs_s = time.perf_counter() - start
    print(f"transformers (fp32): {theirs} tokens in {theirs_s:.2f} s = {theirs / theirs_s:.1f} tokens/s")
    print(f"ratio: {(ours / ours_s) / (theirs / theirs_s):.2f}x")


if __name__ == "__main__":
    main()
