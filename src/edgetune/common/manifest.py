"""manifest.json: what a bundle (or merged model) holds, where it came from, and file hashes.

Written last during a build; `verify` re-hashes every listed file so a corrupted or
edited bundle is refused by name before anything runs on it.
"""

import json
from pathlib import Path

from edgetune.common.atomic import write_json_atomic
from edgetune.common.errors import BundleError
from edgetune.common.hashing import sha256_file
from edgetune.common.names import MANIFEST

SCHEMA_VERSION = 1


def list_files(folder: Path) -> dict[str, dict]:
    """Every file under `folder` (the manifest excluded) with its size and sha256."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return files


def write_manifest(folder: Path, fields: dict) -> dict:
    """Write manifest.json into `folder`: `fields` plus the schema version and file list."""
    manifest = {"schema_version": SCHEMA_VERSION, **fields, "files": list_files(folder)}
    write_json_atomic(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path) -> dict:
    """Load a folder's manifest.json, with a one-line error if it is missing or unreadable."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise BundleError(f"{folder}: no such bundle folder")
    manifest = read_json(path, BundleError, missing="missing (not an edgetune bundle?)")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{path}: schema_version {manifest.get('schema_version')} is not {SCHEMA_VERSION}")
    return manifest


def verify(folder: Path, manifest: dict | None = None, only: tuple[str, ...] | None = None) -> dict:
    """Check each listed file's size and sha256 (only those in `only`, if given); name the first that differs."""
    folder = Path(folder)
    manifest = manifest or read_manifest(folder)
    for rel, entry in manifest["files"].items():
        if only is not None and rel not in only:
            continue
        path = folder / rel
        if not path.is_file():
            raise BundleError(f"{path}: listed in the manifest but missing")
        if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            raise BundleError(f"{path}: sha256 does not match the manifest (corrupted or edited)")
    return manifest


def read_json(path: Path, error: type[Exception], missing: str = "missing") -> dict:
    """Parse a JSON file, raising `error` with one line naming the file if it is absent or malformed."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
