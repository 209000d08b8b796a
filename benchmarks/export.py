"""Time `edgetune export` on a bundle's adapter, each format, against llama.cpp's own converter.

    python benchmarks/export.py [BUNDLE] [--rounds 3]

The adapter is random, of the bundle's own shapes (SmolLM2-135M with r=8 on q/v by
default). Each contender runs as a fresh process, as a user runs it, and the rounds
alternate between contenders; the median wall time is printed. Contenders:
- `edgetune export --format gguf | onnx-adapter | peft` (the target is under 2 s);
- `edgetune export --format gguf` on a bundle opened for the first time: `open_bundle` hashes
  all its files when its verify cache is missing (the other contenders find it in place);
- `edgetune export --format genai`, a whole model folder (the 660 MB graph verified, rewritten
  and written with the adapter), for scale;
- llama.cpp's `convert_lora_to_gguf.py` on the same PEFT adapter (.venvs/llama-src, run
  with this python: it needs torch and transformers), the peer for GGUF;
- ORT 1.31's `AdapterFormat` writing the same parameters (.venvs/ort): the other way to
  write an .onnx_adapter, which docs/design.md weighs against our own writer.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from adapter_swap import random_adapters  # benchmarks/ is on sys.path when run as a script
from edgetune.common import names
from edgetune.exporters.onnx_adapter import decode_adapter

ROOT = Path(__file__).resolve().parents[1]
HF_CLASSES = {  # config.json's `architectures`, which convert_lora_to_gguf.py needs (GGUF-built bundles lack it)
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
COLD = "edgetune export --format gguf, first open"
ORT_WRITE = (
    "import sys, numpy as np, onnxruntime as ort\n"
    "params = dict(np.load(sys.argv[1]))\n"
    "f = ort.AdapterFormat(); f.set_adapter_version(1); f.set_model_version(1)\n"
    "f.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})\n"
    "f.export_adapter(sys.argv[2])\n"
)


def timed(cmd: list, forget: Path | None = None) -> float:
    """Wall seconds of one process; raises with its stderr if it fails. `forget`: a file to delete first."""
    if forget is not None:
        forget.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} if "/.venvs/" in str(cmd[0]) else None
    start = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    """Run every contender --rounds times, alternating, and print the medians."""
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", nargs="?", default="artifacts/smollm2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bundle = Path(args.bundle)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapter = random_adapters(bundle, tmp, n=1)[0]
        cli = [sys.executable, "-m", "edgetune.cli", "export", bundle, "--adapter", adapter]
        subprocess.run([*map(str, cli), "--format", "onnx-adapter", "-o", str(tmp / "p.onnx_adapter")], check=True)
        _, params = decode_adapter((tmp / "p.onnx_adapter").read_bytes())
        np.savez(tmp / "params.npz", **params)
        src = ROOT / ".venvs/llama-src"
        config = json.loads((bundle / "config.json").read_text())
        config.setdefault("architectures", [HF_CLASSES[config["model_type"]]])
        (tmp / "base").mkdir()
        (tmp / "base" / "config.json").write_text(json.dumps(config))
        contenders = {
            "edgetune export --format gguf": cli + ["--format", "gguf", "-o", tmp / "a.gguf"],
            COLD: cli + ["--format", "gguf", "-o", tmp / "c.gguf"],
            "llama.cpp convert_lora_to_gguf.py": [
                sys.executable, src / "convert_lora_to_gguf.py", adapter,
                "--base", tmp / "base", "--outfile", tmp / "b.gguf",
            ],
            "edgetune export --format onnx-adapter": cli + ["--format", "onnx-adapter", "-o", tmp / "a.onnx_adapter"],
            "ORT 1.31 AdapterFormat (.venvs/ort)": [
                ROOT / ".venvs/ort/bin/python", "-c", ORT_WRITE, tmp / "params.npz", tmp / "b.onnx_adapter"
            ],
            "edgetune export --format peft": cli + ["--format", "peft", "-o", tmp / "peft"],
            "edgetune export --format genai": cli + ["--format", "genai", "-o", tmp / "genai"],
        }  # fmt: skip
        times = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, cmd in contenders.items():
                times[name].append(timed(cmd, bundle / names.VERIFY_CACHE if name == COLD else None))
    load = f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    print(f"{load}; {args.rounds} rounds, fresh process each")
    for name, values in times.items():
        print(f"  {name:40} median {statistics.median(values):6.2f} s  (min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main()
