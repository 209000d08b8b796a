"""PEFT-compatible adapter_config.json: the dict PEFT's `LoraConfig` reads back."""

from edgetune.common.errors import AdapterError

SUPPORTED_PEFT_TYPES = ("LORA",)
# Fields the graphs express, or that only describe the adapter / PEFT's defaults.
HANDLED_FIELDS = {
    "peft_type", "task_type", "base_model_name_or_path", "revision", "peft_version", "auto_mapping",
    "r", "lora_alpha", "lora_dropout", "target_modules", "fan_in_fan_out", "bias", "use_rslora",
    "use_dora", "init_lora_weights", "inference_mode", "megatron_core", "qalora_group_size",
}
# init_lora_weights values that only chose the starting point; others (pissa, olora,
# loftq, eva, corda, ...) also rewrite the base weights, which a bundle keeps as exported.
PLAIN_INITS = (True, False, "gaussian")


def make_adapter_config(
    base_model: str, targets: list[str] | str, rank: int, alpha: float, dropout: float,
    fan_in_fan_out: bool, use_rslora: bool = False, use_dora: bool = False,
) -> dict:
    """The adapter_config.json fields PEFT needs to load an edgetune adapter.

    `targets` is a list of module names, or a regex string as PEFT matches it.
    """
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": targets if isinstance(targets, str) else sorted(targets),
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
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise AdapterError(f"{source}: r={r!r} is not a positive integer")
    if not isinstance(config.get("lora_alpha"), (int, float)):
        raise AdapterError(f"{source}: lora_alpha={config.get('lora_alpha')!r} is not a number")
    if not config.get("target_modules"):
        raise AdapterError(f"{source}: target_modules is missing (target_parameters is not supported)")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{source}: bias={config['bias']!r} is not supported (only 'none')")
    if config.get("init_lora_weights", True) not in PLAIN_INITS:
        raise AdapterError(f"{source}: init_lora_weights={config['init_lora_weights']!r} changes the base "
                           f"weights and is not supported (convert the adapter to plain LoRA first)")
    for field, value in config.items():
        if field not in HANDLED_FIELDS and value:
            raise AdapterError(f"{source}: {field}={value!r} is not supported")
