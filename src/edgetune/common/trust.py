"""Who made a bundle or an adapter: Ed25519 signatures and the public keys a device trusts.

- `keygen(KEYFILE)` writes a private key (PEM, mode 0600) and `KEYFILE.pub`, one line in
  OpenSSH's format (`ssh-ed25519 AAAA... edgetune`).
- A signed folder holds `edgetune.sig` (JSON: the signer's public key and the signature).
  A bundle's signature covers its manifest.json byte for byte (and so, through its
  sha256 list, every file); an adapter's covers the sha256 of adapter_config.json and
  adapter_model.safetensors. Each message starts with its kind, so a signature of one
  kind never passes for another.
- Trusted keys: the public-key lines of the file given as `trust=` (the CLI's `--trust`),
  else of the file named by `EDGETUNE_TRUSTED_KEYS`. With keys configured, an unsigned
  folder, or one signed by another key, is refused; with none, signatures are not checked.

The `cryptography` package does the mathematics; it is imported only when a key is used.
"""

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgetune.common.atomic import write_atomic, write_json_atomic
from edgetune.common.errors import EdgetuneError
from edgetune.common.names import SIGNATURE

TRUSTED_KEYS_ENV = "EDGETUNE_TRUSTED_KEYS"
SIGNATURE_FORMAT = "edgetune-signature-1"
MAX_SIGNATURE_BYTES = 4096


class TrustError(EdgetuneError):
    """A key cannot be used, or a folder's origin cannot be established while keys are configured."""


@dataclass(frozen=True)
class TrustedKeys:
    """The raw Ed25519 public keys a device accepts, and the file they came from."""

    keys: frozenset[bytes]
    source: str


def fingerprint(raw_public_key: bytes) -> str:
    """A short name for a public key, as OpenSSH prints it (SHA256:...)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw_public_key).digest()).decode().rstrip("=")


def keygen(path: str | os.PathLike) -> Path:
    """Write a new Ed25519 private key to `path` (mode 0600, never over an existing file) and `path.pub`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path, pub = Path(path), Path(f"{path}.pub")
    for target in (path, pub):
        if target.exists() or target.is_symlink():
            raise TrustError(f"{target}: already exists (keygen never overwrites a key)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    try:
        write_atomic(path, pem, mode=0o600)
        write_atomic(pub, line + b" edgetune\n")
    except OSError as e:
        raise TrustError(f"{e.filename or path}: cannot write the key ({e.strerror})") from None
    return pub


def load_private_key(path: str | os.PathLike):
    """The Ed25519 private key in a PEM file written by `keygen`."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_small(Path(path), 64 * 1024, "key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise TrustError(f"{path}: not an unencrypted PEM private key ({' '.join(str(e).split())})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError(f"{path}: not an Ed25519 key")
    return key


def load_trusted_keys(path: str | os.PathLike) -> TrustedKeys:
    """The public keys in a file of OpenSSH lines (`ssh-ed25519 AAAA... comment`; blank and # lines skipped)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = _read_small(Path(path), 1 << 20, "trusted keys file").decode("utf-8", "replace")
    keys = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            key = serialization.load_ssh_public_key(line.strip().encode())
        except (ValueError, TypeError, IndexError, UnsupportedAlgorithm):
            raise TrustError(f"{path}:{number}: not an OpenSSH public key line") from None
        if not isinstance(key, Ed25519PublicKey):
            raise TrustError(f"{path}:{number}: not an ssh-ed25519 key")
        keys.add(key.public_bytes_raw())
    if not keys:
        raise TrustError(f"{path}: no public key in it (an empty trust list would trust nothing)")
    return TrustedKeys(frozenset(keys), str(path))


def resolve_trust(trust: str | os.PathLike | TrustedKeys | None) -> TrustedKeys | None:
    """The keys to check against: `trust` (a keys file), else $EDGETUNE_TRUSTED_KEYS's file, else None."""
    if isinstance(trust, TrustedKeys):
        return trust
    if trust is None:
        trust = os.environ.get(TRUSTED_KEYS_ENV) or None
    return None if trust is None else load_trusted_keys(trust)


def signed_message(kind: str, payload: bytes) -> bytes:
    """What a signature covers: the kind, then the payload (manifest bytes, or an adapter's digests)."""
    return f"edgetune {kind} signature v1\n".encode() + payload


def sign(folder: Path, kind: str, payload: bytes, key_path: str | os.PathLike) -> str:
    """Sign `payload` as `kind` with the key in `key_path` into folder/edgetune.sig; returns the key's fingerprint."""
    from cryptography.hazmat.primitives import serialization

    key = load_private_key(key_path)
    public = key.public_key()
    record = {
        "format": SIGNATURE_FORMAT,
        "kind": kind,
        "public_key": public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode(),
        "signature": base64.b64encode(key.sign(signed_message(kind, payload))).decode(),
    }
    write_json_atomic(Path(folder) / SIGNATURE, record)
    return fingerprint(public.public_bytes_raw())


def check_signature(folder: Path, kind: str, payload: bytes, trusted: TrustedKeys | None) -> str | None:
    """Refuse `folder` unless a trusted key signed `payload` as `kind`; returns the signer's fingerprint.

    With no trusted keys configured nothing is checked and None is returned.
    """
    if trusted is None:
        return None
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(folder) / SIGNATURE
    if not path.is_file() or path.is_symlink():
        raise TrustError(f"{folder}: not signed, and trusted keys are configured ({trusted.source})")
    try:
        record = json.loads(_read_small(path, MAX_SIGNATURE_BYTES, "signature"))
        public = serialization.load_ssh_public_key(record["public_key"].encode())
        signature = base64.b64decode(record["signature"], validate=True)
        if record["format"] != SIGNATURE_FORMAT or not isinstance(public, Ed25519PublicKey):
            raise ValueError(record["format"])
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, UnsupportedAlgorithm):
        raise TrustError(f"{path}: not an edgetune signature") from None
    raw = public.public_bytes_raw()
    if raw not in trusted.keys:
        raise TrustError(f"{folder}: signed by {fingerprint(raw)}, which is not in {trusted.source}")
    if record["kind"] != kind:
        raise TrustError(f"{path}: signs a {record['kind']}, not a {kind}")
    try:
        public.verify(signature, signed_message(kind, payload))
    except InvalidSignature:
        raise TrustError(f"{path}: the signature does not match (the {kind} was changed after signing)") from None
    return fingerprint(raw)


def _read_small(path: Path, limit: int, what: str) -> bytes:
    """A small regular file's bytes, with one-line errors."""
    try:
        if not path.is_file():
            raise TrustError(f"{path}: no such {what}")
        if path.stat().st_size > limit:
            raise TrustError(f"{path}: too large for a {what} (over {limit} bytes)")
        return path.read_bytes()
    except OSError as e:
        raise TrustError(f"{path}: cannot read the {what} ({e.strerror})") from None
