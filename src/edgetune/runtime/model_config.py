"""What decoding reads from a model folder's config.json and generation_config.json, checked.

Both files come with the bundle, so every field used is checked for its type and range and
a bad one is a one-line error naming the file and field.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from edgetune.common.errors import BundleError

MAX_JSON_BYTES = 16 << 20
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")


@dataclass(frozen=True)
class ModelConfig:
    """The context length, the EOS ids and the attention geometry of an exported decoder."""

    max_context: int
    eos_token_ids: frozenset[int]
    heads: int | None
    kv_heads: int | None
    head_dim: int | None

    def past_shape(self, graph_shape: list) -> tuple[int, int, int, int]:
        """(1, kv_heads, 0, head_dim) for an empty KV cache; symbolic graph dims come from config.json."""
        kv_heads = graph_shape[1] if isinstance(graph_shape[1], int) else self.kv_heads
        head_dim = graph_shape[3] if isinstance(graph_shape[3], int) else self.head_dim
        if kv_heads is None or head_dim is None:
            raise BundleError("config.json: no num_attention_heads/hidden_size to shape the KV cache with")
        return 1, kv_heads, 0, head_dim


def read_model_config(config_path: Path, generation_path: Path | None) -> ModelConfig:
    """Read config.json (and generation_config.json if given) into a checked ModelConfig."""
    config = read_json_object(config_path)
    generation = read_json_object(generation_path) if generation_path is not None else {}
    context_key = next((k for k in CONTEXT_KEYS if k in config), None)
    if context_key is None:
        raise BundleError(f"{config_path}: no max_position_embeddings (context length)")
    max_context = _whole(config, context_key, config_path)
    eos = _ids(config, config_path) | _ids(generation, generation_path)
    heads = _whole(config, "num_attention_heads", config_path, None) or _whole(config, "n_head", config_path, None)
    hidden = _whole(config, "hidden_size", config_path, None) or _whole(config, "n_embd", config_path, None)
    kv_heads = _whole(config, "num_key_value_heads", config_path, None) or heads
    head_dim = _whole(config, "head_dim", config_path, None) or (hidden // heads if hidden and heads else None)
    return ModelConfig(max_context, frozenset(eos), heads, kv_heads, head_dim)


def read_json_object(path: Path) -> dict:
    """A JSON object from a small file, or a one-line BundleError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) > MAX_JSON_BYTES:
        raise BundleError(f"{path}: larger than {MAX_JSON_BYTES} bytes")
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise BundleError(f"{path}: not a JSON object")
    return value


def _whole(config: dict, key: str, path: Path, default: object = ...) -> int | None:
    """config[key] as a whole number >= 1 (None/absent gives `default` when one is given)."""
    value = config.get(key)
    if value is None and default is not ...:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1 << 40:
        raise BundleError(f"{path}: field {key} must be a whole number >= 1, got {value!r}")
    return value


def _ids(config: dict, path: Path | None) -> set[int]:
    """An `eos_token_id` field (absent, null, an int or a list of ints) as a set of ids."""
    value = config.get("eos_token_id")
    values = [] if value is None else [value] if not isinstance(value, list) else value
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise BundleError(f"{path}: field eos_token_id must be token ids (whole numbers >= 0), got {value!r}")
    return set(values)
