"""Start a bundle from an adapter trained with PEFT in PyTorch (`build_bundle(init_adapter=...)`).

The adapter's adapter_config.json decides the adapter: r, lora_alpha, lora_dropout,
use_rslora, use_dora and target_modules, matched against module paths as PEFT matches
them (a string is a full-match regex, a list matches a path or its trailing components).
Its tensors become the training checkpoint's initial values.
"""

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgetune.builder.graph import LinearSite
from edgetune.builder.registry import Architecture
from edgetune.common.errors import AdapterError, EdgetuneError
from edgetune.common.peft import load_adapter, lora_keys, magnitude_key, read_adapter_config, to_graph_layout
from edgetune.options import ALL_LINEAR, LoraSpec


def read_init_adapter(folder: Path, arch: Architecture) -> tuple[dict, LoraSpec]:
    """The PEFT adapter's config (checked) and the LoraSpec it implies."""
    config = read_adapter_config(folder)
    if bool(config.get("fan_in_fan_out", False)) != arch.fan_in_fan_out:
        raise AdapterError(
            f"{folder}: fan_in_fan_out={config.get('fan_in_fan_out')} does not fit "
            f"{arch.model_type} (fan_in_fan_out={arch.fan_in_fan_out})"
        )
    spec = LoraSpec(
        rank=config["r"],
        alpha=float(config["lora_alpha"]),
        dropout=float(config.get("lora_dropout", 0.0)),
        use_rslora=bool(config.get("use_rslora")),
    )
    return config, spec


def target_matcher(target_modules: str | list[str], arch: Architecture) -> Callable[[str], bool]:
    """PEFT's rule for whether a module path is targeted."""
    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        return lambda path: path.rsplit(".", 1)[-1] in arch.linear_names
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as e:
            raise EdgetuneError(f"target_modules {target_modules!r} is not a valid regex ({e})") from None
        return lambda path: pattern.fullmatch(path) is not None
    targets = set(target_modules)
    return lambda path: path in targets or any(path.endswith(f".{t}") for t in targets)


def import_weights(folder: Path, sites: list[LinearSite], config: dict, source_sha256: str) -> dict[str, np.ndarray]:
    """The adapter's tensors in graph layout, after checking they fit these layers exactly."""
    fits = {
        "adapted_modules": [s.module_path for s in sites],
        "source": {"weights_sha256": source_sha256},
        "adapter_config": {"use_dora": bool(config.get("use_dora"))},
    }
    weights, _ = load_adapter(folder, fits)
    r = config["r"]
    for site in sites:
        key_a, key_b = lora_keys(site.module_path)
        shapes = {key_a: (r, site.in_features), key_b: (site.out_features, r)}
        if config.get("use_dora"):
            shapes[magnitude_key(site.module_path)] = (site.out_features,)
        for key, shape in shapes.items():
            if weights[key].shape != shape:
                raise AdapterError(
                    f"{folder}: {key} has shape {tuple(weights[key].shape)}, but this model's "
                    f"layer needs {shape} (adapter trained on another base model?)"
                )
    return to_graph_layout(weights)
