"""What the serving attention takes from a HF config: head shape, score scale, per-layer windows and rotary tables.

scale     GroupQueryAttention's `scale` where the family's is not 1/√head_dim: Granite's
          attention_multiplier, Gemma 2's and Gemma 3's query_pre_attn_scalar^-½
window    per layer, GQA's local_window_size: the keys before the query that it sees
          (transformers' sliding_window counts the query's own key too), -1 for full attention;
          `layer_types` says which layers slide (Gemma 2, Gemma 3, Qwen2), else all do (Mistral)
rotary    per layer, which (cos, sin) tables: Gemma 3's sliding layers turn with their own
          base (rope_local_base_freq, default rope), its full layers with rope_theta and rope_scaling;
          LongRoPE (Phi-3.5, Phi-3 128k) turns positions from original_max_position_embeddings on
          with its long factors, as transformers does when it decodes a token a call (one call
          over a longer prompt would turn every position with them)
"""

import copy

import numpy as np

from edgetune.common.errors import EdgetuneError

SLIDING = "sliding_attention"
GLOBAL_TABLES, LOCAL_TABLES = "global", "local"


def attention_shape(config) -> dict:
    """Heads, kv heads, head dim, positions and score scale of a HF config; per layer its window and tables."""
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    positions = getattr(config, "max_position_embeddings", None) or config.n_positions
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    return {
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "positions": positions,
        "scale": attention_scale(config),
        "windows": layer_windows(config, layers),
        "tables": layer_tables(config, layers),
    }


def attention_scale(config) -> float | None:
    """The attention score scale where it is not 1/√head_dim (None: GQA's default)."""
    multiplier = getattr(config, "attention_multiplier", None)  # Granite
    if multiplier is not None:
        return float(multiplier)
    scalar = getattr(config, "query_pre_attn_scalar", None)  # Gemma 2, Gemma 3
    if scalar is not None:
        return float(scalar) ** -0.5
    return None


def layer_windows(config, layers: int) -> list[int]:
    """Per layer, GQA's local_window_size (transformers' sliding_window - 1), or -1 for full attention."""
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if not window:
        return [-1] * layers
    types = getattr(config, "layer_types", None) or [SLIDING] * layers
    return [int(window) - 1 if kind == SLIDING else -1 for kind in types]


def layer_tables(config, layers: int) -> list[str]:
    """Per layer, the name of its rotary tables: LOCAL_TABLES for Gemma 3's sliding layers, else GLOBAL_TABLES."""
    if getattr(config, "rope_local_base_freq", None) is None:
        return [GLOBAL_TABLES] * layers
    types = getattr(config, "layer_types", None) or [SLIDING] * layers
    return [LOCAL_TABLES if kind == SLIDING else GLOBAL_TABLES for kind in types]


def rotary_tables(config, positions: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Name -> (cos, sin) of shape (positions, rotary_dim / 2), computed as transformers' rotary embeddings do."""
    tables = {GLOBAL_TABLES: _tables(config, positions)}
    if getattr(config, "rope_local_base_freq", None) is not None:  # as Gemma3TextModel.rotary_emb_local
        local = copy.deepcopy(config)
        local.rope_theta = config.rope_local_base_freq
        local.rope_scaling = {"rope_type": "default"}
        tables[LOCAL_TABLES] = _tables(local, positions)
    return tables


def _tables(config, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) of one rope configuration, scaled by its attention factor."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3", "yarn", "longrope"):
        raise EdgetuneError(f"rope_scaling type {rope_type!r} is not supported by the serving graph")
    init = ROPE_INIT_FUNCTIONS[rope_type]
    inv_freq, attention_scaling = init(config, "cpu")
    freqs = torch.arange(positions, dtype=torch.float32)[:, None] * inv_freq.float()[None]  # (P, rotary/2)
    if rope_type == "longrope":  # Phi-3.5, Phi-3 128k: long factors from the pretrained length on
        original = getattr(config, "original_max_position_embeddings", None) or config.max_position_embeddings
        long_inv_freq, _ = init(config, "cpu", seq_len=original + 1)
        freqs[original:] = torch.arange(original, positions, dtype=torch.float32)[:, None] * long_inv_freq.float()[None]
    return (freqs.cos() * attention_scaling).numpy(), (freqs.sin() * attention_scaling).numpy()
