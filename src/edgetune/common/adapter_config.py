"""PEFT-compatible adapter_config.json: the dict PEFT's `LoraConfig` reads back."""

from edgetune.common.errors import AdapterError

SUPPORTED_PEFT_TYPES = ("LORA",)


def make_adapter_config(
    base_model: str, targets: list[str], rank: int, alpha: float, dropout: float,
    fan_in_fan_out: bool, use_rslora: bool = False, use_dora: bool = False,
) -> dict:
    """The adapter_config.json fields PEFT needs to load an edgetune adapter."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(targets),
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "use_rslora": use_rslora,
        "use_dora": use_dora,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def scaling(config: dict) -> float:
    """PEFT's LoRA scale from a config: alpha/r, or alpha/sqrt(r) with rsLoRA."""
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / (r ** 0.5 if config.get("use_rslora") else r)


def check_supported(config: dict, source: str) -> None:
    """Refuse configs the graph cannot express, naming the field."""
    if config.get("peft_type") not in SUPPORTED_PEFT_TYPES:
        raise AdapterError(f"{source}: peft_type {config.get('peft_type')!r} is not supported (only LORA)")
    for field in ("rank_pattern", "alpha_pattern"):
        if config.get(field):
            raise AdapterError(f"{source}: {field} is not supported")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{source}: bias={config['bias']!r} is not supported (only 'none')")
