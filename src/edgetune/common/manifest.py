"""manifest.json: what a bundle (or merged model) holds, where it came from, and file hashes.

Written last during a build. `read_manifest` checks its fields; the files themselves are
checked against it by `edgetune.common.bundle.open_bundle`, the one way to open a bundle.
"""

import json
import math
from pathlib import Path

from edgetune.common import names
from edgetune.common.atomic import write_json_atomic
from edgetune.common.errors import BundleError
from edgetune.common.hashing import sha256_file
from edgetune.common.names import MANIFEST

SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20
TOKENIZER = names.TOKENIZER_FILES[0]
REQUIRED_FILES = {  # kind -> the files it cannot work without
    "bundle": (
        names.TRAINING_MODEL,
        names.EVAL_MODEL,
        names.OPTIMIZER_MODEL,
        names.CHECKPOINT,
        names.INFERENCE_MODEL,
        names.HF_CONFIG,
        TOKENIZER,
    ),
    "merged": (names.MERGED_MODEL, names.HF_CONFIG, TOKENIZER),
    "genai": (names.MERGED_MODEL, names.GENAI_CONFIG, names.HF_CONFIG, TOKENIZER),  # `edgetune export --format genai`
}


def list_files(folder: Path) -> dict[str, dict]:
    """Every file under `folder` (the manifest excluded) with its size and sha256."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel not in (MANIFEST, names.SIGNATURE, names.VERIFY_CACHE):
            files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return files


def write_manifest(folder: Path, fields: dict) -> dict:
    """Write manifest.json into `folder`: `fields` plus the schema version and file list.

    A signature of an earlier manifest no longer applies and is removed (sign again).
    """
    manifest = {"schema_version": SCHEMA_VERSION, **fields, "files": list_files(folder)}
    (folder / names.SIGNATURE).unlink(missing_ok=True)
    write_json_atomic(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path) -> dict:
    """Load a folder's manifest.json and check its fields, with one-line errors. Hashes are not checked here:
    `edgetune.common.bundle.open_bundle` does that, and everything that runs a bundle opens it so."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such bundle folder")
    path = folder / MANIFEST
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise BundleError(f"{path}: not a regular file")
    try:
        if path.is_file() and path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (not an edgetune bundle?)") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror})") from None
    return parse_manifest(data, path)


def parse_manifest(data: bytes, path: Path) -> dict:
    """A manifest from its bytes, its fields checked (`path` names it in errors)."""
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest, path: Path) -> None:
    """Refuse a manifest whose fields the runtime cannot rely on, naming the first bad field."""

    def bad(field: str, why: str):
        return BundleError(f"{path}: field {field} {why}")

    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: not a JSON object")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise bad("schema_version", f"is {manifest.get('schema_version')!r}, not {SCHEMA_VERSION}")
    kind = manifest.get("kind")
    if kind not in REQUIRED_FILES:
        raise bad("kind", f"is {kind!r}, not one of {', '.join(REQUIRED_FILES)}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise bad("files", "must be a non-empty object of file name -> {size, sha256}")
    for name, entry in files.items():
        size = entry.get("size") if isinstance(entry, dict) else None
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(f"files[{name!r}].size", f"must be a whole number >= 0, got {size!r}")
        if not _is_sha256(sha):
            raise bad(f"files[{name!r}].sha256", "must be 64 lowercase hex digits")
    for name in REQUIRED_FILES[kind]:
        if name not in files:
            raise bad("files", f"does not list {name}, which a {kind} folder needs")
    source = manifest.get("source")
    if not isinstance(source, dict) or not _is_sha256(source.get("weights_sha256")):
        raise bad("source.weights_sha256", "must be 64 lowercase hex digits")
    if kind == "bundle":
        _check_bundle_fields(manifest, bad)


def _check_bundle_fields(manifest: dict, bad) -> None:
    """The fields training and adapters read from a bundle's manifest."""
    modules = manifest.get("adapted_modules")
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) and m for m in modules):
        raise bad("adapted_modules", "must be a non-empty list of module paths")
    if manifest.get("optimizer") not in ("adamw", "sgd"):
        raise bad("optimizer", f"is {manifest.get('optimizer')!r}, not adamw or sgd")
    config = manifest.get("adapter_config")
    if not isinstance(config, dict):
        raise bad("adapter_config", "must be an object (PEFT's adapter_config.json)")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise bad("adapter_config.r", f"must be a whole number >= 1, got {r!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise bad("adapter_config.lora_alpha", f"must be a finite number, got {alpha!r}")


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def read_json(path: Path, error: type[Exception], missing: str = "missing") -> dict:
    """Parse a JSON file, raising `error` with one line naming the file if it is absent or malformed."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
