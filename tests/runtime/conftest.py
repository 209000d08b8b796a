"""Tokenizer folders for the data-pipeline tests: a tiny BPE trained here, and SmolLM2's."""

import json
import random

import pytest

# A ChatML template that also uses bos_token/eos_token, to check they are passed through.
TINY_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus(n=400, seed=0):
    rng = random.Random(seed)
    words = [
        "the",
        "a",
        "cat",
        "dog",
        "sat",
        "on",
        "mat",
        "date",
        "is",
        "year",
        "month",
        "day",
        "what",
        "hello",
        "hi",
        "there",
        "answer",
        "question",
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A byte-level BPE (vocab 300) with <s>, </s>, <pad>, ChatML markers; adds BOS to text."""
    from tests.tiny_tokenizer import train_byte_level_bpe

    folder = tmp_path_factory.mktemp("tiny_tok")
    tok = train_byte_level_bpe(_corpus(), 300, ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"])
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "add_bos_token": True,
        "chat_template": TINY_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def smollm2_hf_tokenizer():
    """SmolLM2-135M-Instruct's transformers tokenizer, read from the embedded GGUF."""
    import transformers

    from edgetune.common.embedded import smollm2_gguf

    gguf = smollm2_gguf()
    return transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_hf_tokenizer, tmp_path_factory):
    """SmolLM2's tokenizer saved as a plain folder (tokenizer.json, tokenizer_config.json, chat_template.jinja)."""
    folder = tmp_path_factory.mktemp("smollm2_tok")
    smollm2_hf_tokenizer.save_pretrained(str(folder))
    return folder
