"""Full-size random models laid out as the Hugging Face hub ships them, without the hub.

    python benchmarks/hub_models.py phi-3-mini-4k artifacts/bench/models/phi-3-mini-4k

A folder gets the published config (transformers' `Phi3Config()` defaults are
Phi-3-mini-4k-instruct's), random bf16 weights in safetensors shards of at most 5 GB with
`model.safetensors.index.json` (the hub's layout: Phi-3-mini-4k is 2 shards, 7.64 GB), and
a tokenizer. There is no hub here, so the tokenizer is not the published one: it is a
SentencePiece-style BPE (metaspace, `<unk>`, `<s>`, `</s>` at 0-2) trained on this machine's
Python standard library sources to the published size, then the published special tokens
after it (Phi-3: 32000 + 11 chat tokens, embedding rows padded to 32064 as in the config;
Llama-3.2-1B: the same 32000 + 3, well under its 128256 rows, with Phi-3's chat template;
TinyLlama-1.1B: 32000 + `</s>`). SmolLM2-135M, Gemma 3 270M and Qwen2.5-0.5B get SmolLM2's
own tokenizer instead (49,152 tokens, within their embeddings): training a BPE that large
takes minutes, and the benchmarks fold their training ids into any vocabulary anyway.

The shards are written one tensor at a time (the largest, Phi-3's embedding, is 197 MB in
bf16), so making a 3.8B model needs well under 1 GiB of memory. Values are drawn as the
model's own init draws them: normal(0, initializer_range) for matrices, ones for norms.
"""

import json
import struct
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.integrations.accelerate import init_empty_weights

import workloads
from build_figures import CONFIGS

SHARD_BYTES = 5_000_000_000  # save_pretrained's default max_shard_size, the hub's 5 GB
PHI3_SPECIALS = [
    "<|endoftext|>",
    "<|assistant|>",
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    "<|system|>",
    "<|end|>",
    "<|placeholder5|>",
    "<|placeholder6|>",
    "<|user|>",
]
PHI3_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
LLAMA_3_2_1B = {  # meta-llama/Llama-3.2-1B's config.json (the tokenizer here is smaller: rows past it are never read)
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
}
SMOLLM2_135M = {  # HuggingFaceTB/SmolLM2-135M-Instruct's config.json
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
}
GEMMA_3_270M = {  # google/gemma-3-270m's config.json (as the Q4_K_M GGUF's metadata gives it)
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "vocab_size": 262144,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "query_pre_attn_scalar": 256,
    "sliding_window": 512,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    "initializer_range": 0.02,
}
QWEN_2_5_0_5B = {k: v for k, v in CONFIGS["qwen2.5-0.5b"].items() if k not in ("model_type", "architectures")}
TINYLLAMA_1_1B = {k: v for k, v in CONFIGS["tinyllama-1.1b"].items() if k not in ("model_type", "architectures")}
MODELS = {  # name -> (model_type, config.json fields beyond the type's defaults, tokenizer base size, specials)
    "smollm2-135m": ("llama", SMOLLM2_135M, None, []),  # None: SmolLM2's own tokenizer (fits the embedding)
    "gemma-3-270m": ("gemma3_text", GEMMA_3_270M, None, []),
    "qwen2.5-0.5b": ("qwen2", QWEN_2_5_0_5B, None, []),
    "tinyllama-1.1b": ("llama", TINYLLAMA_1_1B, 32000, ["</s>"]),
    "phi-3-mini-4k": ("phi3", {}, 32000, PHI3_SPECIALS),
    "phi-3.5-mini": (
        "phi3",
        {
            "max_position_embeddings": 131072,
            "original_max_position_embeddings": 4096,
            "rope_scaling": {  # LongRoPE, 48 factors each as published; stand-in values (no shape or cost changes)
                "type": "longrope",
                "short_factor": [1.0 + i / 26 for i in range(48)],
                "long_factor": [1.09**i for i in range(48)],
            },
            "sliding_window": 262144,
        },
        32000,
        PHI3_SPECIALS,
    ),
    "llama-3.2-1b": ("llama", LLAMA_3_2_1B, 32000, ["<|end_of_text|>", "<|begin_of_text|>", "<|eot_id|>"]),
}


def tensor_specs(model_type: str, fields: dict) -> tuple[object, list[tuple[str, tuple[int, ...]]]]:
    """The config and (name, shape) of every saved tensor, in the model's order, tied weights once."""
    config = AutoConfig.for_model(model_type, **fields)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # a tied LM head is not saved
    return config, [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def random_tensor(name: str, shape: tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    """A bf16 tensor as the model's init makes it: ones for a norm (1-D weight), else normal(0, std)."""
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16) if name.endswith("weight") else torch.zeros(shape).bfloat16()
    return (torch.randn(shape, generator=generator) * std).to(torch.bfloat16)


def write_shards(folder: Path, specs: list[tuple[str, tuple[int, ...]]], std: float, seed: int = 0) -> dict:
    """Write the safetensors shards and their index, one tensor in memory at a time; return the index."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in specs:  # fill each shard up to SHARD_BYTES, as save_pretrained does
        nbytes = 2 * _numel(shape)
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    generator = torch.Generator().manual_seed(seed)
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(folder / file, shard, std, generator)
        weight_map |= dict.fromkeys((name for name, _ in shard), file)
    index = {"metadata": {"total_size": sum(2 * _numel(s) for _, s in specs)}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return index


def _write_safetensors(path: Path, tensors: list, std: float, generator: torch.Generator) -> None:
    """One safetensors file (8-byte header length, JSON header, then the data), tensors generated as written."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + 2 * _numel(shape)]}
        offset += 2 * _numel(shape)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, shape in tensors:
            f.write(random_tensor(name, shape, std, generator).view(torch.uint8).numpy().tobytes())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def write_tokenizer(folder: Path, base_size: int, specials: list[str], config) -> None:
    """A SentencePiece-style BPE of `base_size` tokens trained on the stdlib's sources, `specials` after it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )  # as Llama's
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=base_size, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False
    )
    sources = sorted(Path(json.__file__).resolve().parent.parent.glob("*.py"))  # the stdlib's top-level modules
    tok.train_from_iterator((p.read_text(errors="replace") for p in sources), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token=specials[0], unk_token="<unk>", pad_token=specials[0]
    )
    fast.add_special_tokens({"additional_special_tokens": specials})
    fast.chat_template = PHI3_TEMPLATE
    if len(fast) > config.vocab_size:
        raise ValueError(f"the tokenizer has {len(fast)} tokens, the config's embedding {config.vocab_size} rows")
    fast.save_pretrained(folder)


def make_folder(name: str, folder: Path, tokenizer=None) -> Path:
    """Write model `name` (a key of MODELS) into `folder` (made here; it must not exist).

    tokenizer: a transformers tokenizer to save instead of training one of the published size
    (models whose base size is None get SmolLM2's: training a BPE of 49k+ tokens takes minutes).
    """
    model_type, fields, base_size, specials = MODELS[name]
    config, specs = tensor_specs(model_type, fields)
    folder.mkdir(parents=True)
    config.architectures = [AutoModelForCausalLM._model_mapping[type(config)].__name__]
    config.torch_dtype = "bfloat16"
    config.save_pretrained(folder)
    if tokenizer is None and base_size is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(workloads.ensure_smollm2_hf())
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    else:
        write_tokenizer(folder, base_size, specials, config)
    write_shards(folder, specs, config.initializer_range)
    return folder


if __name__ == "__main__":
    sys.exit(print(make_folder(sys.argv[1], Path(sys.argv[2]))))
