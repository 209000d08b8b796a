"""A record of files already hashed, so a bundle that did not change opens without re-hashing it.

`.edgetune-verified.json` inside a bundle holds, for the manifest it was made under, each
checked file's (size, mtime, ctime, inode) with its sha256. A later open trusts a file
whose four values are unchanged: an edit changes the mtime and the ctime (the ctime
cannot be set back from user space), and a copied or replaced file has another inode.

Whoever can write the bundle could also write this record, so the record is authenticated
with an HMAC under a per-user key (`~/.cache/edgetune/verify.key`, 0600, or under
$EDGETUNE_CACHE_DIR): a forged or copied record is ignored, and the files are hashed again.
A bundle folder or cache folder that cannot be written just means no cache.
"""

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from edgetune.common.atomic import write_atomic
from edgetune.common.names import VERIFY_CACHE

CACHE_DIR_ENV = "EDGETUNE_CACHE_DIR"
MAX_CACHE_BYTES = 1 << 20


def stat_key(st: os.stat_result) -> list[int]:
    """What must not change for a file's recorded hash to still hold."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _key() -> bytes | None:
    """This user's HMAC key, made on first use; None if it can be neither read nor made."""
    folder = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "edgetune")
    path = folder / "verify.key"
    try:
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        key = path.read_bytes()
    except OSError:
        return None
    return key if len(key) == 32 else None


def _mac(key: bytes, body: dict) -> str:
    return hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def load(folder: Path, manifest_sha256: str) -> dict[str, list]:
    """name -> [size, mtime_ns, ctime_ns, inode, sha256] recorded under this manifest; {} if none is valid."""
    path = Path(folder) / VERIFY_CACHE
    key = _key()
    try:
        if key is None or path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_CACHE_BYTES:
            return {}
        record = json.loads(path.read_bytes())
        body = {"manifest_sha256": record["manifest_sha256"], "files": record["files"]}
        if not hmac.compare_digest(str(record["mac"]), _mac(key, body)) or body["manifest_sha256"] != manifest_sha256:
            return {}
        return {k: v for k, v in body["files"].items() if isinstance(v, list) and len(v) == 5}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def save(folder: Path, manifest_sha256: str, files: dict[str, list]) -> None:
    """Record checked files (name -> [size, mtime_ns, ctime_ns, inode, sha256]); silently skipped if unwritable."""
    key = _key()
    if key is None:
        return
    body = {"manifest_sha256": manifest_sha256, "files": files}
    with contextlib.suppress(OSError):
        write_atomic(Path(folder) / VERIFY_CACHE, json.dumps({**body, "mac": _mac(key, body)}))
