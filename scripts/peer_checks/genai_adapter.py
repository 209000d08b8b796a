"""Greedy tokens of an onnxruntime-genai model folder, with and without an .onnx_adapter.

Runs in .venvs/genai:
    python scripts/peer_checks/genai_adapter.py FOLDER --ids 1,40,50 [--adapter X.onnx_adapter] [--tokens 16]
Prints one JSON object: `base` (no adapter) and, with --adapter, `adapted` (loaded with
og.Adapters and switched on with set_active_adapter), `base_again` (the adapter still
loaded, a new generator without it), plus `text_ids`, genai's own tokenizer's ids for --text.
"""

import argparse
import json

import onnxruntime_genai as og


def greedy(model, ids: list[int], tokens: int, adapters=None, name: str | None = None) -> list[int]:
    """The first `tokens` greedy tokens after `ids` (fewer if EOS comes first)."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + tokens, do_sample=False)
    generator = og.Generator(model, params)
    if name is not None:
        generator.set_active_adapter(adapters, name)
    generator.append_tokens(ids)
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def main() -> None:
    """Decode greedily without, then with, the adapter."""
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--ids", required=True, help="comma-separated prompt token ids")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--text", default=None, help="also return genai's tokenizer ids of this text")
    args = parser.parse_args()
    ids = [int(i) for i in args.ids.split(",")]
    model = og.Model(args.folder)
    result = {"onnxruntime_genai": og.__version__, "base": greedy(model, ids, args.tokens)}
    if args.adapter:
        adapters = og.Adapters(model)
        adapters.load(args.adapter, "exported")
        result["adapted"] = greedy(model, ids, args.tokens, adapters, "exported")
        result["base_again"] = greedy(model, ids, args.tokens)  # the adapter stays loaded, switched off
    if args.text is not None:
        result["text_ids"] = [int(i) for i in og.Tokenizer(model).encode(args.text)]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
