"""Tiny random encoders of every supported family, each with a tokenizer trained here.

The saved folders hold the bare encoder (`AutoModel`), as sentence-transformers
checkpoints do, so a build initialises the task head anew. bert, distilbert and electra
get a WordPiece tokenizer ([CLS] a [SEP] b [SEP]); roberta and xlm-roberta a byte-level
BPE (<s> a </s></s> b </s>).
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModel,
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    XLMRobertaConfig,
)

from tests.tiny_models import sample_text
from tests.tiny_tokenizer import train_byte_level_bpe

VOCAB = 200
_BERT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
)
_ROBERTA = dict(_BERT, max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2)
CONFIGS = {
    "bert": lambda: BertConfig(**_BERT),
    "distilbert": lambda: DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128
    ),
    "roberta": lambda: RobertaConfig(**_ROBERTA),
    "xlm-roberta": lambda: XLMRobertaConfig(**_ROBERTA),
    "electra": lambda: ElectraConfig(**_BERT, embedding_size=16),  # embeddings_project 16 -> 32
}
ENCODERS = tuple(CONFIGS)
WORDPIECE = ("bert", "distilbert", "electra")
CORPUS_WORDS = ["alice", "bob", "paris", "london", "acme", "corp", "pays", "meets", "in", "at", "on", "who", "where"]


def corpus(n: int = 1500) -> list[str]:
    """Generated sentences the tokenizers are trained on."""
    extra = sample_text(n, seed=11)
    return [
        f"{s} {CORPUS_WORDS[i % len(CORPUS_WORDS)]} {CORPUS_WORDS[(i * 7) % len(CORPUS_WORDS)]}"
        for i, s in enumerate(extra)
    ]


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """A lower-casing WordPiece tokenizer with BERT's special tokens and pair template."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(
        corpus(), trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=specials, show_progress=False)
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def roberta_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with RoBERTa's special tokens (ids 0-4) and pair template."""
    tok = train_byte_level_bpe(corpus(), VOCAB, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.post_processor = processors.RobertaProcessing(
        sep=("</s>", 2), cls=("<s>", 0), trim_offsets=True, add_prefix_space=True
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


def make_encoder_dir(arch: str, folder: Path, seed: int = 0) -> Path:
    """Save a random tiny `arch` encoder (no task head) and its tokenizer as a HF folder."""
    torch.manual_seed(seed)
    AutoModel.from_config(CONFIGS[arch]()).save_pretrained(folder)
    (wordpiece_tokenizer() if arch in WORDPIECE else roberta_tokenizer()).save_pretrained(folder)
    return Path(folder)


def task_examples(task: str, n: int, seed: int = 0) -> list[dict]:
    """Generated examples of `task` in its JSONL format (labels as in tests' ENCODER_LABELS)."""
    import random

    rng = random.Random(seed)
    names, places = ["alice", "bob", "carol", "dave"], ["paris", "london"]
    rows = []
    for _ in range(n):
        name, place, pays = rng.choice(names), rng.choice(places), rng.random() < 0.5
        if task == "text-classification":
            rows.append({"text": f"{name} {'pays' if pays else 'meets'} {place}", "label": "pos" if pays else "neg"})
        elif task == "token-classification":
            rows.append({"tokens": [name, "meets", "in", place], "tags": ["B-PER", "O", "O", "B-LOC"]})
        else:
            context = f"{name} meets bob in {place} on monday"
            answers = {"text": [place], "answer_start": [context.index(place)]}
            rows.append({"question": "where does she meet bob", "context": context, "answers": answers})
    return rows
