"""How often llama.cpp, with an exported GGUF LoRA, decodes what edgetune decodes: LoRA and QLoRA adapters.

    python benchmarks/export_agreement.py BUNDLE ADAPTER --data heldout.jsonl [--base BASE.gguf] [--limit 20]

For each prompt of a prompt/completion JSONL file: edgetune's greedy tokens with the adapter
on the bundle, and llama.cpp's (.venvs/llama) on the base GGUF (default: the embedded
SmolLM2 Q4_1 file) with `edgetune export --format gguf` of the same adapter. Prints how
many prompts agree token for token (up to edgetune's EOS) and each side's exact match on
the completions. A QLoRA adapter was trained on the bundle's quantized base; llama.cpp
applies it to the GGUF's: this measures what that costs.
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from edgetune.common.embedded import smollm2_gguf
from edgetune.exporters import export
from edgetune.runtime.generate import Generator

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    """Decode every prompt on both sides and print the agreement."""
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle")
    parser.add_argument("adapter")
    parser.add_argument("--data", required=True)
    parser.add_argument("--base", default=None, help="base GGUF for llama.cpp (default: the embedded SmolLM2)")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()[: args.limit]]
    generator = Generator(args.bundle, adapter=args.adapter)
    prompts = [generator.encode(row["prompt"]) for row in rows]
    ours = [generator.generate_ids(ids, args.tokens) for ids in prompts]
    with tempfile.TemporaryDirectory() as tmp:
        summary = export(Path(args.bundle), Path(args.adapter), "gguf", Path(tmp) / "a.gguf")
        (Path(tmp) / "prompts.json").write_text(json.dumps(prompts))
        script = ROOT / "scripts/peer_checks/llama_lora.py"
        cmd = [ROOT / ".venvs/llama/bin/python", script, args.base or smollm2_gguf(), "--ids-file"]
        cmd += [Path(tmp) / "prompts.json", "--lora", Path(tmp) / "a.gguf", "--tokens", str(args.tokens)]
        out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True).stdout
        theirs = json.loads(out)["tokens"]
    agree = sum(t[: len(o)] == o for o, t in zip(ours, theirs))

    def exact(tokens_per_prompt):
        texts = [generator.tokenizer.decode(t).split("\n")[0].strip() for t in tokens_per_prompt]
        return sum(text == row["completion"].strip() for text, row in zip(texts, rows))

    manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
    print(f"{args.bundle} ({manifest['method']}, {manifest.get('quantization')}); {summary.get('note', '')}")
    print(f"  token-for-token agreement with llama.cpp: {agree}/{len(rows)} prompts ({args.tokens} tokens)")
    print(f"  exact match: edgetune {exact(ours)}/{len(rows)}, llama.cpp {exact(theirs)}/{len(rows)}")


if __name__ == "__main__":
    main()
