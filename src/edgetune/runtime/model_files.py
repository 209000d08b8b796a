"""What a decoder needs from a model folder besides its graph: tokenizer, EOS ids, context, chat template."""

import jinja2

from edgetune.common import names
from edgetune.common.bundle import Bundle
from edgetune.common.errors import EdgetuneError
from edgetune.runtime.batching import load_tokenizer
from edgetune.runtime.chat_template import render_chat
from edgetune.runtime.model_config import read_model_config


def utf8_text(text: str, what: str = "the prompt") -> str:
    """`text` if it can be encoded as UTF-8 (command-line bytes that are not UTF-8 arrive as surrogates)."""
    if not isinstance(text, str):
        raise EdgetuneError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise EdgetuneError(f"{what} is not valid UTF-8 (at character {e.start + 1})") from None
    return text


class ModelFiles:
    """config.json, generation_config.json and the tokenizer files of an opened bundle or merged folder."""

    def __init__(self, bundle: Bundle):
        config = read_model_config(bundle.path(names.HF_CONFIG), bundle.optional(names.GENERATION_CONFIG))
        self.tokenizer, self.tokenizer_info = load_tokenizer(bundle.folder)
        self.tokenizer.no_truncation()
        self.eos_token_ids = config.eos_token_ids | ({self.tokenizer_info.eos_id} - {None})
        self.max_context = config.max_context

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a plain prompt, BOS first when the tokenizer adds one (as training does)."""
        info = self.tokenizer_info
        ids = self.tokenizer.encode(utf8_text(prompt), add_special_tokens=False).ids
        return ([info.bos_id] if info.add_bos else []) + ids

    def chat_text(self, messages: list[dict]) -> str:
        """`messages` rendered with the chat template, ending with the assistant's turn header."""
        info = self.tokenizer_info
        if not info.chat_template:
            raise EdgetuneError("this model has no chat template (tokenizer_config.json or chat_template.jinja)")
        try:
            return render_chat(info.chat_template, messages, info.bos_token, info.eos_token, add_generation_prompt=True)
        except jinja2.TemplateError as e:
            raise EdgetuneError(f"chat template: {' '.join(str(e).split())}") from e

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of the rendered chat (the template places any BOS itself)."""
        return self.tokenizer.encode(utf8_text(self.chat_text(messages)), add_special_tokens=False).ids
