"""The serving graph's rewrites, applied to the with-past export (the training graphs never see them).

    attention      each layer's attention core -> RotaryEmbedding + GroupQueryAttention over a
                   preallocated KV buffer that ORT writes in place; rows may sit at different positions
    attention_config  what it reads from the HF config: score scale, per-layer windows and rotary tables
    adapter_bank   the LoRA branches read a bank of adapters through a per-row adapter index
    last_position  the LM head runs on each row's last position only
    quantize       the frozen Linear weights int8 or int4, on MatMulNBits kernels
Why each exists and what it measured: docs/design.md, "Serving graph".
"""
