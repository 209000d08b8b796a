"""`edgetune export`: an adapter (or the bundle) in the formats of llama.cpp/Ollama, ONNX Runtime and genai."""

import argparse
from pathlib import Path

from edgetune.cli.common import add_command
from edgetune.options import EXPORT_FORMATS


def run_export(args: argparse.Namespace) -> None:
    """Export and print what was written."""
    from edgetune.exporters import export

    adapter = Path(args.adapter) if args.adapter else None
    summary = export(Path(args.bundle), adapter, args.format, Path(args.output))
    what = f"{args.adapter} as {args.format}" if adapter else f"{args.bundle} as {args.format}"
    print(f"exported {what} to {args.output}")
    if args.format == "gguf":
        print(f"  llama.cpp: llama-cli -m BASE.gguf --lora {args.output}   Ollama Modelfile: ADAPTER {args.output}")
    if summary.get("note"):
        print(f"  note: {summary['note']}")


def register(sub) -> None:
    """Add `export`."""
    p = add_command(
        sub, "export", run_export, help="write an adapter for llama.cpp/Ollama, ONNX Runtime >= 1.20 or genai"
    )
    p.add_argument("bundle")
    p.add_argument("--adapter", default=None, help="PEFT adapter folder (runs/NAME/adapter); optional for genai")
    p.add_argument(
        "--format",
        required=True,
        choices=EXPORT_FORMATS,
        help="gguf: llama.cpp/Ollama LoRA; onnx-adapter: ORT >= 1.20 LoraAdapter; genai: a model folder; peft",
    )
    p.add_argument("-o", "--output", required=True, help="file (gguf, onnx-adapter) or folder (genai, peft)")
