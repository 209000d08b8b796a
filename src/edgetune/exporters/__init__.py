"""Adapters out to the runtimes people already use: llama.cpp/Ollama, ONNX Runtime >= 1.20, onnxruntime-genai.

    export(bundle, adapter, "gguf", "out/x.gguf")       # llama.cpp --lora, Ollama ADAPTER
    export(bundle, adapter, "onnx-adapter", "out/x.onnx_adapter")
    export(bundle, adapter, "genai", "out/genai/")      # adapter optional
    export(bundle, adapter, "peft", "out/peft/")

One module per format; `source` holds what they share. Device side: numpy, onnx and
flatbuffers; the `gguf` package comes with the `export` extra.
"""

import importlib
from pathlib import Path

from edgetune.common.errors import EdgetuneError
from edgetune.common.peft import save_adapter
from edgetune.exporters.source import ExportSource, load_source, need_adapter
from edgetune.options import EXPORT_FORMATS


def write_peft(source: ExportSource, out: Path) -> dict:
    """The adapter in PEFT's own format again (adapter_config.json + adapter_model.safetensors)."""
    need_adapter(source, "peft")
    sha = source.manifest["source"]["weights_sha256"]
    save_adapter(out, source.weights, source.adapter_config, sha, base_delta=source.deltas)
    return {"format": "peft", "tensors": len(source.weights), "rank": source.rank}


WRITERS = {  # format -> (module, function): only the chosen format's module is imported (onnx takes a while)
    "gguf": ("edgetune.exporters.gguf_lora", "write_gguf_lora"),
    "onnx-adapter": ("edgetune.exporters.onnx_adapter", "write_onnx_adapter"),
    "genai": ("edgetune.exporters.genai", "write_genai_folder"),
    "peft": ("edgetune.exporters", "write_peft"),
}


def export(bundle: Path, adapter: Path | None, fmt: str, out: Path, *, trust=None) -> dict:
    """Write the bundle's adapter (or, for genai, the bundle itself) in format `fmt` at `out`; return a summary.

    trust: trusted public keys for the bundle and adapter (None: $EDGETUNE_TRUSTED_KEYS), as `open_bundle`.
    """
    if fmt not in WRITERS:
        raise EdgetuneError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    module, function = WRITERS[fmt]
    writer = getattr(importlib.import_module(module), function)
    return writer(load_source(bundle, adapter, trust=trust), Path(out))


def describe(path: Path) -> dict:
    """What an exported .gguf or .onnx_adapter file is and what base it needs (for `edgetune inspect`)."""
    from edgetune.exporters.gguf_lora import describe_gguf
    from edgetune.exporters.onnx_adapter import describe_onnx_adapter

    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"GGUF":
        return describe_gguf(Path(path))
    if head[4:8] == b"TORT":
        return describe_onnx_adapter(Path(path))
    raise EdgetuneError(f"{path}: neither a bundle folder, a GGUF file nor an .onnx_adapter file")
