"""The adapter contract between the build and the runtime, in PEFT's terms: one home for it.

- Keys: an adapted module `model.layers.0.self_attn.q_proj` has the PEFT state-dict keys
  `base_model.model.<path>.lora_A.weight` (r, in), `...lora_B.weight` (out, r) and, for
  DoRA, `...lora_magnitude_vector` (out,). The graphs name their adapter tensors with
  the same keys.
- Layouts: the graphs hold Aᵀ (in, r) and Bᵀ (r, out) (ORT 1.19's training optimizer
  fails on a Transpose of a trainable tensor, and MatMul wants them so); PEFT files hold
  A and B. Moving between the two is a transpose of every tensor, nothing else.
- Scaling: alpha / r, or alpha / √r with rsLoRA, written once (`scaling`).
- Graph branch names: the LoRA branch of a module is the nodes named under
  `branch_prefix(path)`, and the base layer's output is renamed `base_output(path)`.
  `merge` finds branches by these names, which the rewrite promises to produce.
- Files: adapter_config.json + adapter_model.safetensors, read and written here, with
  the refusals for PEFT settings a graph cannot express.
"""

import math
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from edgetune.common.atomic import atomic_folder, write_json_atomic
from edgetune.common.errors import AdapterError, OutputError
from edgetune.common.hashing import sha256_file
from edgetune.common.manifest import read_json
from edgetune.common.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_DELTA
from edgetune.common.trust import TrustedKeys, check_signature, resolve_trust, sign

PEFT_PREFIX = "base_model.model."  # PEFT's key prefix in front of the HF module path
MAGNITUDE = "lora_magnitude_vector"  # DoRA's per-output magnitude, PEFT's name
BASE_SHA_KEY = "edgetune.base_weights_sha256"  # safetensors metadata; PEFT ignores it
BRANCH_ROOT = "/lora/"  # graph node names of every LoRA branch start with this
MAX_ADAPTER_BYTES = 8 << 30
DELTA_SUFFIX = ".base_layer.weight_delta"  # a base-weight delta's key: PEFT's base-layer key + "_delta"

SUPPORTED_PEFT_TYPES = ("LORA",)
# Fields the graphs express, or that only describe the adapter / PEFT's defaults.
HANDLED_FIELDS = {
    "peft_type",
    "task_type",
    "base_model_name_or_path",
    "revision",
    "peft_version",
    "auto_mapping",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "fan_in_fan_out",
    "bias",
    "use_rslora",
    "use_dora",
    "init_lora_weights",
    "inference_mode",
    "megatron_core",
    "qalora_group_size",
}
# init_lora_weights values that only chose the starting point; others (pissa, olora,
# loftq, eva, corda, ...) also rewrite the base weights, which a bundle keeps as exported.
PLAIN_INITS = (True, False, "gaussian")


# ---- keys, scaling, layouts, graph names ----------------------------------------------


def lora_keys(module_path: str) -> tuple[str, str]:
    """PEFT's keys of the A and B tensors of one adapted module."""
    return f"{PEFT_PREFIX}{module_path}.lora_A.weight", f"{PEFT_PREFIX}{module_path}.lora_B.weight"


def head_key(module_path: str, kind: str) -> str:
    """PEFT's saved key of a task head tensor (`modules_to_save`): kind is weight or bias."""
    return f"{PEFT_PREFIX}{module_path}.{kind}"


def delta_key(module_path: str) -> str:
    """The key of one module's base-weight delta (FedEx-LoRA's folded residual), (out, in) like PEFT's base weight."""
    return f"{PEFT_PREFIX}{module_path}{DELTA_SUFFIX}"


def magnitude_key(module_path: str) -> str:
    """PEFT's key of one module's DoRA magnitude vector."""
    return f"{PEFT_PREFIX}{module_path}.{MAGNITUDE}"


def adapter_keys(modules: list[str], dora: bool) -> list[str]:
    """Every adapter tensor's key: A, B (and DoRA's m) per adapted module, in module order."""
    keys = []
    for path in modules:
        keys += [*lora_keys(path), *([magnitude_key(path)] if dora else [])]
    return keys


def bundle_adapter_keys(manifest: dict) -> list[str]:
    """Every adapter tensor's key of a bundle, from its manifest: LoRA's, then an encoder's task head."""
    lora = adapter_keys(manifest["adapted_modules"], bool(manifest["adapter_config"].get("use_dora")))
    return lora + list(manifest.get("head_tensors", {}))


def bundle_delta_keys(manifest: dict) -> list[str]:
    """The base-delta keys of a bundle built with `base_delta` (none otherwise)."""
    return [delta_key(path) for path in manifest["adapted_modules"]] if manifest.get("base_delta") else []


def scaling(rank: int, alpha: float, use_rslora: bool = False) -> float:
    """PEFT's LoRA scale: alpha/r, or alpha/sqrt(r) with rsLoRA."""
    return alpha / (math.sqrt(rank) if use_rslora else rank)


def config_scaling(config: dict) -> float:
    """The scale an adapter_config.json implies."""
    return scaling(config["r"], config["lora_alpha"], bool(config.get("use_rslora")))


def branch_prefix(module_path: str) -> str:
    """The name prefix of every node of one module's LoRA branch in a graph."""
    return f"{BRANCH_ROOT}{module_path}"


def base_output(module_path: str) -> str:
    """The tensor the adapted module's base layer writes (its own output before the branch is added)."""
    return f"{branch_prefix(module_path)}/base_output"


def to_graph_layout(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PEFT layout (A (r, in), B (out, r), m (out,)) -> graph layout (Aᵀ, Bᵀ, m), contiguous float32."""
    return {k: np.ascontiguousarray(v.T, dtype=np.float32) for k, v in weights.items()}


to_peft_layout = to_graph_layout  # a transpose is its own inverse


# ---- adapter_config.json ----------------------------------------------------------------


def make_adapter_config(
    base_model: str,
    targets: list[str] | str,
    rank: int,
    alpha: float,
    dropout: float,
    fan_in_fan_out: bool,
    use_rslora: bool = False,
    use_dora: bool = False,
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
) -> dict:
    """The adapter_config.json fields PEFT needs to load an edgetune adapter.

    `targets` is a list of module names, or a regex string as PEFT matches it;
    `modules_to_save` an encoder's task head (trained whole, saved under its own keys).
    """
    return {
        "peft_type": "LORA",
        "task_type": task_type,
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
        "modules_to_save": modules_to_save,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def check_supported(config: dict, source: str, head: list[str] | None = None) -> None:
    """Refuse configs the graph cannot express, naming the field; `head` is the bundle's modules_to_save."""
    if config.get("peft_type") not in SUPPORTED_PEFT_TYPES:
        raise AdapterError(f"{source}: peft_type {config.get('peft_type')!r} is not supported (only LORA)")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise AdapterError(f"{source}: r={r!r} is not a positive integer")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise AdapterError(f"{source}: lora_alpha={alpha!r} is not a finite number")
    if not math.isfinite(config_scaling(config)):
        raise AdapterError(f"{source}: the scaling lora_alpha/r is not finite")
    dropout = config.get("lora_dropout", 0.0)
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise AdapterError(f"{source}: lora_dropout={dropout!r} is not in [0, 1)")
    if not config.get("target_modules"):
        raise AdapterError(f"{source}: target_modules is missing (target_parameters is not supported)")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{source}: bias={config['bias']!r} is not supported (only 'none')")
    if config.get("init_lora_weights", True) not in PLAIN_INITS:
        raise AdapterError(
            f"{source}: init_lora_weights={config['init_lora_weights']!r} changes the base "
            f"weights and is not supported (convert the adapter to plain LoRA first)"
        )
    if head and config.get("modules_to_save") != head:
        raise AdapterError(f"{source}: modules_to_save={config.get('modules_to_save')!r} is not this bundle's {head!r}")
    for field, value in config.items():
        if field not in HANDLED_FIELDS and value and not (head and field == "modules_to_save"):
            raise AdapterError(f"{source}: {field}={value!r} is not supported")


def read_adapter_config(folder: Path, head: list[str] | None = None) -> dict:
    """Read an adapter folder's adapter_config.json and refuse what edgetune cannot express."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"{folder}: no such adapter folder")
    config = read_json(folder / ADAPTER_CONFIG, AdapterError)
    if not isinstance(config, dict):
        raise AdapterError(f"{folder / ADAPTER_CONFIG}: not a JSON object")
    check_supported(config, str(folder / ADAPTER_CONFIG), head)
    return config


# ---- adapter files ----------------------------------------------------------------------


def save_adapter(
    folder: Path,
    weights: dict[str, np.ndarray],
    config: dict,
    base_sha256: str,
    base_delta: dict[str, np.ndarray] | None = None,
    *,
    key: str | os.PathLike | None = None,
) -> None:
    """Write a PEFT adapter folder atomically. `weights` in PEFT layout; `base_delta` (out, in) beside them.

    The safetensors metadata records the base model's weights sha256; with `key` (an
    Ed25519 private key file, `edgetune keygen`) the folder is also signed.
    """
    metadata = {"format": "pt", BASE_SHA_KEY: base_sha256}
    with atomic_folder(Path(folder), "saving") as tmp:
        try:
            save_file(
                {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()},
                tmp / ADAPTER_WEIGHTS,
                metadata,
            )
            if base_delta:
                save_file(
                    {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in base_delta.items()}, tmp / BASE_DELTA
                )
        except SafetensorError as e:  # its I/O errors (a full disk) come as this, not as OSError
            found = re.search(r"I/O error: (.+?)(?: \(os error \d+\))?$", str(e))
            raise OutputError(Path(folder), found.group(1) if found else str(e)) from None
        write_json_atomic(tmp / ADAPTER_CONFIG, config)
        if key is not None:
            sign_adapter(tmp, key)


def sign_adapter(folder: Path, key: str | os.PathLike) -> str:
    """Sign an adapter folder's files with the private key in `key`; returns the key's fingerprint."""
    return sign(folder, "adapter", _adapter_payload(Path(folder)), key)


def load_base_delta(folder: Path, manifest: dict, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The base deltas (out, in) beside an adapter, checked against the bundle and the adapter's A and B.

    {} if the folder has none. Any bundle of the same base can merge them; only bundles
    built with `base_delta` can train on them.
    """
    path = Path(folder) / BASE_DELTA
    if not path.is_file():
        return {}
    try:
        deltas = load_file(path)
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{path}: not a readable safetensors file ({e})") from None
    bad = next((k for k, v in deltas.items() if not np.isfinite(v).all()), None)
    if bad is not None:
        raise AdapterError(f"{path}: {bad} holds NaN or inf")
    for path_ in manifest["adapted_modules"]:
        key, (key_a, key_b) = delta_key(path_), lora_keys(path_)
        expected = (weights[key_b].shape[0], weights[key_a].shape[1])  # (out, in)
        if key not in deltas:
            raise AdapterError(f"{path}: lacks {key}")
        if deltas[key].shape != expected:
            raise AdapterError(f"{path}: {key} has shape {tuple(deltas[key].shape)}, not {expected}")
    extra = sorted(set(deltas) - {delta_key(p) for p in manifest["adapted_modules"]})  # any bundle of the base
    if extra:
        raise AdapterError(f"{path}: has tensors the bundle has no layer for, e.g. {extra[0]}")
    return deltas


def load_adapter(
    folder: str | os.PathLike, manifest: Mapping, *, trust: str | os.PathLike | TrustedKeys | None = None
) -> tuple[dict[str, np.ndarray], dict]:
    """Read a PEFT adapter folder and check that it fits a bundle; returns (weights in PEFT layout, config).

    manifest: the bundle's (`open_bundle(...).manifest`). Refused with a one-line AdapterError:
    symlinked or non-regular files, an unsupported config, unreadable safetensors, a tensor
    that is not floating point or holds NaN/inf (named), a non-finite scaling, another base
    model's weights sha256, keys or ranks that do not fit. trust: a trusted public keys
    file (else $EDGETUNE_TRUSTED_KEYS); with keys, the adapter must be signed by one of them.
    """
    folder = Path(folder)
    payload = _adapter_payload(folder)  # confines both files first
    check_signature(folder, "adapter", payload, resolve_trust(trust))
    config = read_adapter_config(folder, manifest["adapter_config"].get("modules_to_save"))
    weights_path = folder / ADAPTER_WEIGHTS
    try:
        weights = {_strip_adapter_name(k): v for k, v in load_file(weights_path).items()}
        with safe_open(weights_path, "np") as f:
            base_sha = (f.metadata() or {}).get(BASE_SHA_KEY)
    except (SafetensorError, OSError, TypeError, ValueError) as e:
        raise AdapterError(f"{weights_path}: not a readable safetensors file ({' '.join(str(e).split())})") from None
    for key, value in weights.items():
        if value.dtype.kind != "f":
            raise AdapterError(f"{weights_path}: {key} is {value.dtype}, not floating point")
        if not np.isfinite(value).all():
            raise AdapterError(f"{weights_path}: {key} holds NaN or infinite values")
    if base_sha and base_sha != manifest["source"]["weights_sha256"]:
        raise AdapterError(f"{folder}: adapter was trained on a different base model (weights sha256 differs)")
    _check_fits(weights, config, manifest, folder)
    return weights, config


def _adapter_payload(folder: Path) -> bytes:
    """What an adapter signature covers: the sha256 of its config, weights and base-delta files (each regular)."""
    if not folder.is_dir():
        raise AdapterError(f"{folder}: no such adapter folder")
    lines = []
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_DELTA):
        path = folder / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if name == BASE_DELTA:  # optional: only fleet (FedEx-LoRA) adapters carry it
                continue
            raise AdapterError(f"{path}: missing") from None
        if not stat.S_ISREG(st.st_mode):
            raise AdapterError(f"{path}: not a regular file (a symlink or a device?)")
        if st.st_size > MAX_ADAPTER_BYTES:
            raise AdapterError(f"{path}: larger than {MAX_ADAPTER_BYTES >> 30} GiB")
        lines.append(f"{name} {sha256_file(path)}\n")
    return "".join(lines).encode()


def _strip_adapter_name(key: str) -> str:
    """PEFT saves `...lora_A.weight` and `...lora_magnitude_vector`; in-memory state dicts say
    `...lora_A.default.weight` and `...lora_magnitude_vector.default.weight`."""
    key = key.replace(".default.weight", ".weight")
    return key.replace(f".{MAGNITUDE}.weight", f".{MAGNITUDE}")


def _check_fits(weights: dict, config: dict, manifest: dict, folder: Path) -> None:
    """Refuse an adapter whose kind, keys or ranks do not fit the bundle, naming the tensor."""
    dora, ours = bool(config.get("use_dora")), bool(manifest["adapter_config"].get("use_dora"))
    if dora != ours:
        kinds = {True: "DoRA", False: "LoRA"}
        raise AdapterError(f"{folder}: a {kinds[dora]} adapter does not fit this {kinds[ours]} bundle")
    expected = set(bundle_adapter_keys(manifest))
    extra = sorted(set(weights) - expected)
    if extra:
        raise AdapterError(f"{folder}: adapter has tensors the bundle has no layer for, e.g. {extra[0]}")
    missing = sorted(expected - set(weights))
    if missing:
        raise AdapterError(f"{folder}: adapter lacks {missing[0]} (targets {config.get('target_modules')})")
    head = manifest.get("head_tensors", {})  # PEFT key -> shape (PEFT layout)
    for key, value in weights.items():
        if key in head:
            if list(value.shape) != head[key]:
                raise AdapterError(
                    f"{folder}: {key} has shape {tuple(value.shape)}, the bundle's head {tuple(head[key])}"
                )
            continue
        if key.endswith(MAGNITUDE):
            if value.ndim != 1:
                raise AdapterError(f"{folder}: {key} has shape {tuple(value.shape)}, not (out_features,)")
        elif value.ndim != 2 or value.shape[0 if ".lora_A." in key else 1] != config["r"]:
            raise AdapterError(f"{folder}: {key} has shape {tuple(value.shape)}, which does not fit r={config['r']}")
