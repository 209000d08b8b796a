"""The tests' tiny byte-level BPE tokenizers, made one way (tokenizers only: torch-free tests use it too)."""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def train_byte_level_bpe(corpus: list[str], vocab_size: int, specials: list[str]) -> Tokenizer:
    """A byte-level BPE of `vocab_size` tokens trained on `corpus`; `specials` get ids 0, 1, ... in order."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return tok
