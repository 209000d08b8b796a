"""A PEFT LoRA adapter as a GGUF LoRA file, the way llama.cpp's `convert_lora_to_gguf.py` writes it.

    llama-cli -m base.gguf --lora adapter.gguf        Ollama: ADAPTER ./adapter.gguf

- Metadata: `general.type=adapter`, `adapter.type=lora`, `adapter.lora.alpha` (float32) and
  `general.architecture`, the base GGUF's architecture name (llama.cpp refuses a mismatch).
- Tensors: `blk.N.<name>.weight.lora_a` = PEFT's A (r, in) and `.lora_b` = B (out, r), as
  they are (numpy's row-major shape is GGUF's `ne` reversed, so A is ne=[in, r] as llama.cpp
  wants). Names come from the `gguf` package's map of Hugging Face module names.
- llama.cpp scales by alpha/r at run time, with r read from A. rsLoRA's alpha/√r is written
  as alpha' = alpha·√r, so that alpha'/r is PEFT's scale (convert_lora_to_gguf.py ignores
  `use_rslora`).
- Llama-family q_proj/k_proj: llama.cpp's converter permutes the rows of those base weights
  (HF's rotary halves -> llama.cpp's interleaved pairs), so B's rows are permuted the same
  way; A reads the input and is untouched.
- GPT-2: HF's Conv1D weight is (in, out) and the converter transposes the base weight to
  (out, in); PEFT's A and B are already (r, in), (out, r), so they go as they are.
"""

from pathlib import Path

import numpy as np

from edgetune.common.atomic import atomic_file
from edgetune.common.errors import AdapterError, EdgetuneError
from edgetune.exporters.source import ExportSource, need_adapter, optional_import, refuse_deltas, refuse_dora

# HF model_type -> (GGUF architecture name, whether llama.cpp permutes q/k rows), as
# convert_hf_to_gguf.py converts each: Mistral goes through its LlamaModel.
ARCHITECTURES = {
    "llama": ("llama", True),
    "mistral": ("llama", True),
    "qwen2": ("qwen2", False),
    "phi3": ("phi3", False),
    "gpt2": ("gpt2", False),
}
BASE_SHA_KEY = "edgetune.base_weights_sha256"
SOURCE_KEY = "edgetune.source_model"


def permute_rows(b: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` on the output rows of B (out, r): per head, rotary halves -> pairs."""
    out = b.shape[0]
    return b.reshape(n_head, 2, out // n_head // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def gguf_tensors(source: ExportSource) -> tuple[str, dict[str, np.ndarray]]:
    """The GGUF architecture name and every `blk.N.*.weight.lora_a/_b` tensor (float32, llama.cpp's layout)."""
    gguf = optional_import("gguf")
    model_type = source.manifest["architecture"]
    if model_type not in ARCHITECTURES:
        raise EdgetuneError(f"{source.bundle}: no GGUF LoRA mapping for architecture {model_type!r}")
    arch_name, permuted = ARCHITECTURES[model_type]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    config = source.hf_config
    n_layers = config.get("num_hidden_layers", config.get("n_layer"))
    n_head = config.get("num_attention_heads", config.get("n_head"))
    n_kv_head = config.get("num_key_value_heads") or n_head
    name_map = gguf.get_tensor_name_map(arch, n_layers)
    tensors = {}
    for path in source.modules:
        name = name_map.get_name(path)
        if name is None:
            raise AdapterError(f"{source.adapter}: {path} has no tensor in llama.cpp's {arch_name} architecture")
        a, b = source.pair(path)  # (r, in), (out, r)
        if permuted and path.endswith("q_proj"):
            b = permute_rows(b, n_head)
        elif permuted and path.endswith("k_proj"):
            b = permute_rows(b, n_kv_head)
        tensors[f"{name}.weight.lora_a"] = np.ascontiguousarray(a, np.float32)
        tensors[f"{name}.weight.lora_b"] = np.ascontiguousarray(b, np.float32)
    return arch_name, tensors


def write_gguf_lora(source: ExportSource, out: Path) -> dict:
    """Write the adapter as a GGUF LoRA file at `out`, atomically; return a summary."""
    need_adapter(source, "gguf")
    refuse_dora(source, "GGUF LoRA", "llama.cpp has no magnitude vector; fold it with `edgetune merge` instead")
    refuse_deltas(source, "a GGUF LoRA")
    gguf = optional_import("gguf")
    arch_name, tensors = gguf_tensors(source)
    alpha = source.scale * source.rank  # llama.cpp divides by r
    with atomic_file(Path(out)) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch_name)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        writer.add_name(source.adapter.resolve().name)
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, str(source.manifest["source"]["model"]))
        writer.add_string(SOURCE_KEY, str(source.manifest["source"]["model"]))
        writer.add_string(BASE_SHA_KEY, source.manifest["source"]["weights_sha256"])
        for name, value in tensors.items():
            writer.add_tensor(name, value)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    summary = {
        "format": "gguf",
        "architecture": arch_name,
        "tensors": len(tensors),
        "alpha": alpha,
        "rank": source.rank,
    }
    if source.manifest.get("method") == "qlora":
        summary["note"] = qlora_note(source.manifest)
    return summary


def qlora_note(manifest: dict) -> str:
    """What a QLoRA adapter meets in llama.cpp: the base GGUF the user loads, not the bundle's quantized base."""
    quant = manifest.get("quantization") or {}
    kind = f"{quant.get('type', 'quantized')}" + (f", block {quant['block_size']}" if "block_size" in quant else "")
    return (
        f"a QLoRA adapter (trained on an {kind} base): llama.cpp applies it to the base GGUF you load; "
        "edgetune's int4 with block 32 has the weights of a Q4_1 GGUF"
    )


def describe_gguf(path: Path) -> dict:
    """What a GGUF file is: an adapter (its kind, alpha, rank, base) or a model; for `edgetune inspect`."""
    gguf = optional_import("gguf")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as e:  # a truncated or damaged file
        raise EdgetuneError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.")}
    info = {
        "file": str(path),
        "format": "gguf",
        "type": fields.get("general.type", "model"),
        "architecture": fields.get("general.architecture"),
        "tensors": len(reader.tensors),
    }
    if info["type"] == "adapter":
        lora_a = [t for t in reader.tensors if t.name.endswith(".lora_a")]
        info.update(
            adapter_type=fields.get(gguf.Keys.Adapter.TYPE),
            alpha=fields.get(gguf.Keys.Adapter.LORA_ALPHA),
            rank=int(lora_a[0].shape[1]) if lora_a else None,  # shape is ne: (in, r)
            adapted_tensors=[t.name[: -len(".lora_a")] for t in lora_a],
            base_model=fields.get(SOURCE_KEY) or fields.get("general.base_model.0.name"),
            base_weights_sha256=fields.get(BASE_SHA_KEY),
            needs=f"a {info['architecture']} base GGUF of that model (llama.cpp --lora, Ollama ADAPTER)",
        )
    return info
