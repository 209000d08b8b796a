"""FLOP counts for MFU, one convention for every contender (see BENCHMARKS.md, "MFU convention")."""

from workloads import LORA


def matmul_params(config: dict) -> int:
    """Weights that take part in a matmul per token: every Linear of the decoder plus the LM head.

    The input embedding is a lookup (no FLOPs) and is left out, even when tied to the head.
    """
    d, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d // heads
    attn = d * heads * head_dim * 2 + d * kv * head_dim * 2  # q, o + k, v
    mlp = 3 * d * inter  # gate, up, down
    return layers * (attn + mlp) + d * config["vocab_size"]


def lora_flops_per_token(config: dict) -> int:
    """6 x LoRA parameters (A and B of q and v): negligible, but counted for both sides."""
    d, layers, heads = config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d // heads
    r = LORA["r"]
    params = layers * (r * (d + heads * head_dim) + r * (d + kv * head_dim))
    return 6 * params


def train_flops_per_token(config: dict) -> int:
    """The FLOP convention for MFU (both contenders alike): 4 N + 6 N_lora per token.

    N = matmul_params. Forward 2N; backward 2N for the activation gradients, which LoRA
    still needs through every frozen layer; the 2N of frozen-weight gradients that full
    training would add (the usual 6N) are not executed by either contender and are not
    counted. LoRA's own A/B matmuls are counted in full (6 N_lora, ~0.1% here). Attention
    score/value matmuls and the loss are left out. 6N-based MFU would be 1.5x these figures.
    """
    return 4 * matmul_params(config) + lora_flops_per_token(config)


def attention_flops_per_token(config: dict, seq_len: int) -> int:
    """Attention's score and value matmuls per token, causal (a query sees (S+1)/2 keys on
    average): 2·d·S forward and twice that backward per layer, d = heads x head_dim. Not
    in `train_flops_per_token`; the report shows MFU with and without them."""
    d, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or d // heads
    return 6 * config["num_hidden_layers"] * heads * head_dim * seq_len


def train_flops_per_step(config: dict, tokens: int, labelled: int) -> int:
    """Model FLOPs one step needs: `train_flops_per_token` for every token, except that the
    LM head (4 d V) counts only at the `labelled` positions; the others need no logits."""
    head = 4 * config["hidden_size"] * config["vocab_size"]
    return tokens * (train_flops_per_token(config) - head) + labelled * head
