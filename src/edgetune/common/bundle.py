"""`open_bundle`: the one way to open a bundle or a merged model folder, which comes from a stranger.

Before anything reads a model, a bundle's folder is checked, in this order:
1. manifest.json parses and has every field the runtime reads (`manifest.check_manifest`);
2. its signature, when trusted keys are configured (`trust.check_signature`);
3. confinement: every listed name is a plain relative path; nothing in the folder is a
   symlink, a device, a FIFO or a socket; every file in it is listed (an entry deleted
   from the manifest cannot switch off checking for its file);
4. each listed file's size and sha256, unless the verify cache holds it unchanged;
5. every ONNX graph's external-data references (and of their subgraphs) name listed
   files, with the offset and length inside them, so ONNX Runtime never reads outside.
Steps 4 and 5 are skipped for files the verify cache (`verify_cache`) vouches for.

Callers then take paths from `Bundle.path(name)` (listed files only) and nothing else.
"""

import hashlib
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from edgetune.common import names, verify_cache
from edgetune.common.errors import BundleError
from edgetune.common.hashing import CHUNK
from edgetune.common.manifest import MAX_MANIFEST_BYTES, parse_manifest
from edgetune.common.trust import TrustedKeys, check_signature, resolve_trust, sign

NOT_LISTED = (names.MANIFEST, names.SIGNATURE, names.VERIFY_CACHE)  # files a manifest cannot list
ONNX_SUFFIX = ".onnx"


@dataclass(frozen=True)
class Bundle:
    """An opened, verified bundle (kind "bundle") or merged model folder (kind "merged").

    folder: as given; manifest: its parsed manifest.json; files: listed name -> path inside
    the folder; signed_by: the trusted key's fingerprint, or None when no keys are configured.
    """

    folder: Path
    manifest: Mapping
    files: Mapping[str, Path]
    signed_by: str | None

    @property
    def kind(self) -> str:
        """ "bundle" or "merged"."""
        return self.manifest["kind"]

    def path(self, name: str) -> Path:
        """The path of a listed file (a bundle's required files are always listed)."""
        if name not in self.files:
            raise BundleError(f"{self.folder}: {name} is not listed in its manifest")
        return self.files[name]

    def optional(self, name: str) -> Path | None:
        """The path of a listed file, or None if the manifest does not list it."""
        return self.files.get(name)


def open_bundle(folder: str | os.PathLike, *, trust: str | os.PathLike | TrustedKeys | None = None) -> Bundle:
    """Open and verify a bundle or merged folder; raise BundleError/TrustError with one line naming what is wrong.

    trust: a file of trusted public keys (OpenSSH lines); None reads $EDGETUNE_TRUSTED_KEYS.
    With keys, the manifest must carry a signature by one of them. The first open of a
    folder hashes every file; later opens trust files whose (size, mtime, ctime, inode)
    the verify cache recorded under the same manifest.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such bundle folder")
    manifest_path = folder / names.MANIFEST
    data = _read_manifest_bytes(manifest_path)
    manifest = parse_manifest(data, manifest_path)
    signed_by = check_signature(folder, "manifest", data, resolve_trust(trust))
    files = _verify_contents(folder, data, manifest)
    return Bundle(folder, MappingProxyType(manifest), MappingProxyType(files), signed_by)


def _verify_contents(folder: Path, data: bytes, manifest: dict) -> dict[str, Path]:
    """Steps 3 to 5 of the module docstring; returns listed name -> path."""
    manifest_path = folder / names.MANIFEST
    listed = manifest["files"]
    files = {name: folder / _confined_name(name, manifest_path) for name in listed}
    _check_folder_contents(folder, listed)
    manifest_sha = hashlib.sha256(data).hexdigest()
    cached = verify_cache.load(folder, manifest_sha)
    checked, fresh = {}, False
    for name, entry in listed.items():
        st = os.lstat(files[name])
        key = verify_cache.stat_key(st)
        if cached.get(name) == [*key, entry["sha256"]]:
            checked[name] = cached[name]
            continue
        if st.st_size != entry["size"]:
            raise BundleError(f"{files[name]}: {st.st_size} bytes, not the {entry['size']} its manifest lists")
        if _sha256_regular(files[name]) != entry["sha256"]:
            raise BundleError(f"{files[name]}: sha256 does not match the manifest (corrupted or edited)")
        if name.endswith(ONNX_SUFFIX):
            _check_external_data(files[name], name, listed)
        checked[name], fresh = [*key, entry["sha256"]], True
    if fresh or set(checked) != set(cached):
        verify_cache.save(folder, manifest_sha, checked)
    return files


def sign_manifest(folder: str | os.PathLike, key: str | os.PathLike) -> str:
    """Sign a bundle's or merged folder's manifest.json with a private key file; returns the key's fingerprint.

    The signature covers the manifest's bytes, and through its sha256 list every file.
    """
    folder = Path(folder)
    manifest_path = folder / names.MANIFEST
    data = _read_manifest_bytes(manifest_path)
    _verify_contents(folder, data, parse_manifest(data, manifest_path))  # never sign what does not verify
    return sign(folder, "manifest", data, key)


def _read_manifest_bytes(path: Path) -> bytes:
    """manifest.json's bytes: a regular file, not a symlink, of a sane size."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (not an edgetune bundle?)") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{path}: not a regular file (a symlink or a device?)")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
    with open(path, "rb") as f:
        return f.read(MAX_MANIFEST_BYTES + 1)


def _confined_name(name: str, manifest_path: Path) -> PurePosixPath:
    """A listed name as a relative path that stays inside the folder, or a one-line error."""
    path = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or "\0" in name
        or path.is_absolute()
        or any(part in ("", ".", "..") for part in name.split("/"))
        or name in NOT_LISTED
    ):
        raise BundleError(f"{manifest_path}: lists {name!r}, which is not a plain file name inside the folder")
    return path


def _check_folder_contents(folder: Path, listed: Mapping) -> None:
    """No symlink, device, FIFO or socket anywhere in the folder; every file listed, every listed file present."""
    present = set()
    for rel, st in _walk(folder):
        if stat.S_ISLNK(st.st_mode):
            raise BundleError(f"{folder / rel}: a symlink (bundles must hold their files themselves)")
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{folder / rel}: not a regular file (a device, FIFO or socket)")
        if rel in listed:
            present.add(rel)
        elif rel not in NOT_LISTED and not rel.startswith(f".{names.VERIFY_CACHE}."):
            raise BundleError(f"{folder / rel}: not listed in the manifest (added, or its entry removed?)")
    missing = sorted(set(listed) - present)
    if missing:
        raise BundleError(f"{folder / missing[0]}: listed in the manifest but missing")


def _walk(folder: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative posix path, lstat) of everything under `folder`, never following a symlink."""
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(folder / rel if rel else folder) as entries:
            for entry in entries:
                child = f"{rel}/{entry.name}" if rel else entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(child)
                yield child, st


def _sha256_regular(path: Path) -> str:
    """sha256 of a file opened without following a symlink at its last component."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BundleError(f"{path}: not a regular file")
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_external_data(path: Path, name: str, listed: Mapping) -> None:
    """Every external-data reference of an ONNX file names a listed file, in range."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise BundleError(f"{path}: not a readable ONNX model ({' '.join(str(e).split())[:200]})") from None
    base = PurePosixPath(name).parent
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (base / location).as_posix() if location and not location.startswith("/") else None
        if target is None or ".." in PurePosixPath(location).parts or "\\" in location or target not in listed:
            raise BundleError(
                f"{path}: tensor {tensor.name!r} reads external data from {location!r}, not a file of the bundle"
            )
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", listed[target]["size"]))
        except ValueError:
            raise BundleError(f"{path}: tensor {tensor.name!r} has a malformed external-data offset/length") from None
        if offset < 0 or length < 0 or offset + length > listed[target]["size"]:
            raise BundleError(f"{path}: tensor {tensor.name!r} reads past the end of {target}")


def _tensors(graph) -> Iterator:
    """Every TensorProto of a graph: initializers, sparse ones, and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)
