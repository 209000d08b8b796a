"""What every exporter starts from: a verified bundle, its Hugging Face config, and one adapter in it.

The bundle is opened with `common.bundle.open_bundle` and its files taken from the paths it
lists (`ExportSource.file`). An exporter reads the adapter through `common.peft.load_adapter`
(which checks it fits the bundle) and takes the module paths, keys and scaling from
`common.peft`; nothing here re-derives them. The refusals shared by several formats live here too.
"""

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetune.common import names
from edgetune.common.bundle import open_bundle
from edgetune.common.errors import AdapterError, BundleError, EdgetuneError
from edgetune.common.manifest import read_json
from edgetune.common.peft import config_scaling, load_adapter, load_base_delta, lora_keys

EXPORT_EXTRA = 'pip install "edgetune[export]"'


@dataclass
class ExportSource:
    """A bundle and (optionally) one of its adapters, ready to be written in another format.

    weights are in PEFT layout: A (r, in) and B (out, r) per adapted module.
    """

    bundle: Path
    manifest: dict
    hf_config: dict
    adapter: Path | None = None
    weights: dict[str, np.ndarray] | None = None
    adapter_config: dict | None = None
    deltas: dict[str, np.ndarray] | None = None  # FedEx-LoRA's base-weight deltas (out, in), if the adapter has them
    files: dict[str, Path] = field(default_factory=dict)  # listed name -> path, from `open_bundle`

    def file(self, name: str) -> Path | None:
        """The path of a file the bundle's manifest lists, or None if it does not."""
        return self.files.get(name)

    @property
    def modules(self) -> list[str]:
        """The bundle's adapted module paths, in graph order."""
        return self.manifest["adapted_modules"]

    @property
    def scale(self) -> float:
        """The adapter's scale (alpha/r or alpha/√r), which every format but PEFT must fold somewhere."""
        return config_scaling(self.adapter_config)

    @property
    def rank(self) -> int:
        """The adapter's rank r."""
        return int(self.adapter_config["r"])

    def pair(self, module_path: str) -> tuple[np.ndarray, np.ndarray]:
        """One module's (A (r, in), B (out, r)) in PEFT layout."""
        key_a, key_b = lora_keys(module_path)
        return self.weights[key_a], self.weights[key_b]


def load_source(bundle: Path, adapter: Path | None, *, trust=None) -> ExportSource:
    """Open the bundle with `open_bundle`, read its config.json and, if given, the adapter (checked against the bundle).

    trust: trusted public keys, as `open_bundle` and `load_adapter` take them (None: $EDGETUNE_TRUSTED_KEYS).
    """
    opened = open_bundle(bundle, trust=trust)
    if opened.kind != "bundle":
        raise EdgetuneError(f"{bundle}: a {opened.kind!r} folder, not a bundle (export from the bundle)")
    manifest = dict(opened.manifest)
    task = manifest.get("task", "causal-lm")
    if task != "causal-lm":  # llama.cpp, ORT's adapter inputs and genai serve decoders; the head lives in the adapter
        raise BundleError(f"{bundle}: export supports causal-lm bundles, not {task} (serve it with `edgetune predict`)")
    hf_config = read_json(opened.path(names.HF_CONFIG), EdgetuneError)
    source = ExportSource(Path(bundle), manifest, hf_config, files=dict(opened.files))
    if adapter is not None:
        source.adapter = Path(adapter)
        source.weights, source.adapter_config = load_adapter(source.adapter, manifest, trust=trust)
        source.deltas = load_base_delta(source.adapter, manifest, source.weights)
    return source


def refuse_dora(source: ExportSource, fmt: str, why: str) -> None:
    """Refuse a DoRA adapter in a format that has no magnitude vector, saying why in one line."""
    if source.adapter_config and source.adapter_config.get("use_dora"):
        raise AdapterError(f"{source.adapter}: a DoRA adapter cannot be written as {fmt}: {why}")


def refuse_deltas(source: ExportSource, fmt: str) -> None:
    """Refuse an adapter carrying base-weight deltas in a format that holds only A and B."""
    if source.deltas:
        raise AdapterError(
            f"{source.adapter}: carries base-weight deltas (FedEx-LoRA), which {fmt} cannot hold: "
            "fold them with `edgetune merge` or --format genai"
        )


def need_adapter(source: ExportSource, fmt: str) -> None:
    """Refuse a format that is an adapter file when no --adapter was given."""
    if source.weights is None:
        raise EdgetuneError(f"--format {fmt} writes an adapter: give --adapter DIR")


def optional_import(module: str):
    """Import a package of the `export` extra, or fail in one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EdgetuneError(f"this export needs the '{module}' package: {EXPORT_EXTRA}") from None
