"""What a decoder needs from a model folder besides its graph: tokenizer, EOS ids, context, chat template."""

import json
from pathlib import Path

import jinja2

from edgetune.common import names
from edgetune.common.errors import BundleError, EdgetuneError
from edgetune.runtime.batching import load_tokenizer
from edgetune.runtime.chat_template import render_chat


def read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} if the file does not exist."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def id_set(value) -> set[int]:
    """An `eos_token_id` field (None, an int or a list) as a set of ids."""
    return set() if value is None else {value} if isinstance(value, int) else set(value)


class ModelFiles:
    """config.json, generation_config.json and the tokenizer files of a bundle or merged folder."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        if not (folder / names.HF_CONFIG).is_file():
            raise BundleError(f"{folder}: no {names.HF_CONFIG}")
        config = read_json(folder / names.HF_CONFIG)
        generation = read_json(folder / names.GENERATION_CONFIG)
        self.tokenizer, self.tokenizer_info = load_tokenizer(folder)
        self.tokenizer.no_truncation()
        self.eos_token_ids = frozenset(
            id_set(config.get("eos_token_id"))
            | id_set(generation.get("eos_token_id"))
            | id_set(self.tokenizer_info.eos_id)
        )
        context = next((config[k] for k in ("max_position_embeddings", "n_positions", "n_ctx") if k in config), None)
        if context is None:
            raise BundleError(f"{folder / names.HF_CONFIG}: no max_position_embeddings (context length)")
        self.max_context = int(context)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a plain prompt, BOS first when the tokenizer adds one (as training does)."""
        info = self.tokenizer_info
        return ([info.bos_id] if info.add_bos else []) + self.tokenizer.encode(prompt, add_special_tokens=False).ids

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
        return self.tokenizer.encode(self.chat_text(messages), add_special_tokens=False).ids
