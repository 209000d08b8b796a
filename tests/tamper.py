"""Helpers for tests that edit bundles as a hostile or careless user would."""

import json
import shutil
from pathlib import Path

from edgetune.common.manifest import write_manifest
from edgetune.common.names import MANIFEST


def reseal(folder: Path) -> dict:
    """Recompute a folder's manifest after an edit (what anyone can do without a key); returns it."""
    fields = json.loads((Path(folder) / MANIFEST).read_text())
    fields = {k: v for k, v in fields.items() if k not in ("schema_version", "files")}
    return write_manifest(Path(folder), fields)


def copy_bundle(bundle: Path, to: Path) -> Path:
    """A private copy of a bundle (without its verify cache) to edit."""
    shutil.copytree(bundle, to, ignore=shutil.ignore_patterns(".edgetune-verified.json"))
    return to


def flip_byte(path: Path, offset: int) -> None:
    """Flip the low bit of one byte of a file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))
