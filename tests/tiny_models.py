"""Tiny random models of every supported architecture, with a real trained tokenizer.

Shared by the tests and benchmarks: configs small enough to export in a second, a BPE
tokenizer trained with `tokenizers` on generated text, and a simple chat template.
"""

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    OlmoConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    StableLmConfig,
)

from tests.tiny_tokenizer import train_byte_level_bpe

VOCAB = 320
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
CONFIGS = {
    "llama": lambda: LlamaConfig(**_COMMON, tie_word_embeddings=True),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "mistral": lambda: MistralConfig(**_COMMON, sliding_window=None),
    "phi3": lambda: Phi3Config(**_COMMON),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2
    ),
    "gemma": lambda: GemmaConfig(**_COMMON, head_dim=16),
    "gemma2": lambda: Gemma2Config(**_COMMON, head_dim=16, query_pre_attn_scalar=16, sliding_window=8),
    "gemma3_text": lambda: Gemma3TextConfig(
        **_COMMON,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
    ),
    "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=16),
    "granite": lambda: GraniteConfig(
        **_COMMON, embedding_multiplier=12.0, residual_multiplier=0.22, logits_scaling=8.0, attention_multiplier=0.0625
    ),
    "olmo": lambda: OlmoConfig(**_COMMON),
    "stablelm": lambda: StableLmConfig(**_COMMON, partial_rotary_factor=0.25, use_qkv_bias=True),
}
ALL_ARCHS = tuple(CONFIGS)  # every registry family: the parity tests that prove a family run on these
ARCHS = ("llama", "qwen2", "mistral", "phi3", "gpt2")  # the families every feature (export, int8, ...) is tested on
WORDS = [
    "the",
    "a",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "date",
    "march",
    "april",
    "may",
    "june",
    "2021",
    "1999",
    "iso",
    "convert",
]


def sample_text(n: int, seed: int = 0) -> list[str]:
    """Generated sentences to train the tokenizer (and to train on)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        idx = torch.randint(len(WORDS), (int(torch.randint(4, 12, (1,), generator=g)),), generator=g)
        out.append(" ".join(WORDS[i] for i in idx) + f" {int(torch.randint(1, 31, (1,), generator=g))}.")
    return out


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on generated text, with pad/bos/eos and a chat template."""
    tok = train_byte_level_bpe(sample_text(2000), VOCAB, ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        chat_template=CHAT_TEMPLATE,
    )


def make_model_dir(arch: str, folder: Path, seed: int = 0, **config) -> Path:
    """Save a random tiny `arch` model (config: fields to change) and the tokenizer as a HF folder."""
    torch.manual_seed(seed)
    hf_config = CONFIGS[arch]()
    hf_config.update(config)
    model = AutoModelForCausalLM.from_config(hf_config)
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder
