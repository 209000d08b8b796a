"""A model folder for onnxruntime-genai: the serving graph, genai_config.json, tokenizer files, an adapter.

    model = og.Model("out/genai"); adapters = og.Adapters(model)
    adapters.load("out/genai/adapters/x.onnx_adapter", "x"); generator.set_active_adapter(adapters, "x")

genai_config.json is made from the bundle's config.json (model type, head size, heads, KV
heads, layers, context length, BOS/EOS/PAD) and generation_config.json (search defaults).
Optimum's input and output names are genai's defaults, and the graph is the bundle's
inference graph (`serving.serving_graph`), so the KV cache is past/present tensors that
genai copies between steps (`past_present_share_buffer: false`).

With a LoRA adapter the folder keeps the LoRA inputs and adds the adapter as
`adapters/NAME.onnx_adapter` for `og.Adapters`; without one, adapters exported later with
`--format onnx-adapter` plug into it. A DoRA adapter, or one with FedEx-LoRA base deltas,
is folded into the weights instead (the graph has no input to override for those).
"""

import shutil
from pathlib import Path

import edgetune
from edgetune.common import names
from edgetune.common.atomic import atomic_folder, write_json_atomic
from edgetune.common.errors import EdgetuneError
from edgetune.common.hashing import sha256_file
from edgetune.common.manifest import read_json, write_manifest
from edgetune.exporters.onnx_adapter import adapter_parameters, encode_adapter
from edgetune.exporters.serving import MODEL, merged_graph, save_model, serving_graph
from edgetune.exporters.source import ExportSource

GENAI_CONFIG = names.GENAI_CONFIG
ADAPTERS_DIR = "adapters"
# HF model_type -> genai 0.18's model type. genai's own "gpt2" type expects an older export
# (one combined past tensor per layer); its generic "decoder" runs Optimum's GPT-2 graph.
MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "phi3": "phi3", "gpt2": "decoder"}
COPIED = (names.HF_CONFIG, names.GENERATION_CONFIG, *names.TOKENIZER_FILES)


def _first(config: dict, *keys):
    """The value of the first of `keys` that `config` has (HF configs differ across families)."""
    return next((config[k] for k in keys if config.get(k) is not None), None)


def genai_config(hf_config: dict, generation: dict) -> dict:
    """genai_config.json for an Optimum-exported decoder-only model described by `hf_config`."""
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise EdgetuneError(
            f"onnxruntime-genai has no model type for {model_type!r} (supported: {', '.join(MODEL_TYPES)})"
        )
    heads = _first(hf_config, "num_attention_heads", "n_head")
    hidden = _first(hf_config, "hidden_size", "n_embd")
    layers = _first(hf_config, "num_hidden_layers", "n_layer")
    context = _first(hf_config, "max_position_embeddings", "n_positions", "n_ctx")
    eos = _first(generation, "eos_token_id") or _first(hf_config, "eos_token_id")
    pad = _first(generation, "pad_token_id") or _first(hf_config, "pad_token_id")
    return {
        "model": {
            "type": MODEL_TYPES[model_type],
            "bos_token_id": _first(generation, "bos_token_id") or _first(hf_config, "bos_token_id"),
            "eos_token_id": eos,
            "pad_token_id": pad if pad is not None else (eos[0] if isinstance(eos, list) else eos),
            "vocab_size": hf_config["vocab_size"],
            "context_length": context,
            "decoder": {
                "filename": MODEL,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": _first(hf_config, "head_dim") or hidden // heads,
                "hidden_size": hidden,
                "num_attention_heads": heads,
                "num_key_value_heads": _first(hf_config, "num_key_value_heads") or heads,
                "num_hidden_layers": layers,
                "inputs": {
                    "input_ids": names.INPUT_IDS,
                    "attention_mask": names.ATTENTION_MASK,
                    "position_ids": names.POSITION_IDS,
                    "past_key_names": f"{names.PAST}%d.key",
                    "past_value_names": f"{names.PAST}%d.value",
                },
                "outputs": {
                    "logits": names.LOGITS,
                    "present_key_names": f"{names.PRESENT}%d.key",
                    "present_value_names": f"{names.PRESENT}%d.value",
                },
            },
        },
        "search": {
            "do_sample": bool(generation.get("do_sample", False)),
            "temperature": generation.get("temperature", 1.0),
            "top_k": generation.get("top_k", 50) if generation.get("do_sample") else 1,
            "top_p": generation.get("top_p", 1.0),
            "repetition_penalty": generation.get("repetition_penalty", 1.0),
            "max_length": context,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "early_stopping": True,
            "length_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "diversity_penalty": 0.0,
            "past_present_share_buffer": False,
        },
    }


def _is_byte_level(tokenizer: dict) -> bool:
    """Whether a tokenizer.json is a byte-level BPE (GPT-2's scheme), by its model and pre-tokenizer."""
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return tokenizer.get("model", {}).get("type") == "BPE" and any(p.get("type") == "ByteLevel" for p in steps)


def _plain_byte_level_decoder(folder: Path) -> None:
    """Give a byte-level BPE the plain ByteLevel decoder, by which genai's tokenizer recognises it.

    transformers' GGUF loader writes SmolLM2's byte-level BPE with a SentencePiece-style
    decoder sequence (ByteFallback, Fuse, Replace "▁", ByteLevel); onnxruntime-extensions
    then reads the whole tokenizer as SentencePiece, and most words came out as id -1. The
    ByteLevel step alone decodes a byte-level vocabulary the same way (the Hugging Face
    SmolLM2 tokenizer.json has just that).
    """
    path = folder / "tokenizer.json"
    if not path.is_file():
        return
    tokenizer = read_json(path, EdgetuneError)
    decoder = tokenizer.get("decoder") or {}
    steps = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else []
    byte_level = [step for step in steps if step.get("type") == "ByteLevel"]
    if _is_byte_level(tokenizer) and byte_level and len(steps) > 1:
        write_json_atomic(path, {**tokenizer, "decoder": byte_level[0]})


def write_genai_folder(source: ExportSource, out: Path) -> dict:
    """Write an onnxruntime-genai model folder at `out`, atomically; return its manifest."""
    generation_file = source.file(names.GENERATION_CONFIG)
    generation = read_json(generation_file, EdgetuneError) if generation_file else {}
    config = genai_config(source.hf_config, generation)
    folded = bool(source.adapter_config and source.adapter_config.get("use_dora")) or bool(source.deltas)
    model = merged_graph(source) if folded else serving_graph(source)
    adapter_file = None
    if source.weights is not None and not folded:
        adapter_file = f"{ADAPTERS_DIR}/{source.adapter.resolve().name}.onnx_adapter"
    with atomic_folder(Path(out), "exporting") as tmp:
        save_model(model, tmp)
        write_json_atomic(tmp / GENAI_CONFIG, config)
        for name in COPIED:
            if source.file(name):
                shutil.copy2(source.file(name), tmp / name)
        _plain_byte_level_decoder(tmp)
        if adapter_file:
            (tmp / ADAPTERS_DIR).mkdir()
            (tmp / adapter_file).write_bytes(encode_adapter(adapter_parameters(source)))
        fields = {
            "kind": "genai",
            "edgetune_version": edgetune.__version__,
            "source": source.manifest["source"],
            "architecture": source.manifest["architecture"],
            "adapter": _adapter_entry(source, adapter_file, folded=folded),
        }
        return write_manifest(tmp, fields)


def _adapter_entry(source: ExportSource, adapter_file: str | None, folded: bool) -> dict | None:
    """The manifest's record of the adapter a folder was exported with (None: the base model)."""
    if source.weights is None:
        return None
    return {
        "path": str(source.adapter),
        "sha256": sha256_file(source.adapter / names.ADAPTER_WEIGHTS),
        "file": adapter_file,
        "folded": folded,
    }
