"""Files and folders that appear whole or not at all: write a temporary sibling, fsync, rename.

One writer for everything edgetune saves (manifests, adapters, checkpoints, metrics, data
sets, bundles): an interrupted or failed write leaves the target as it was, absent or the
previous version, and a finished one survives a power cut (file and folder are fsynced
before and after the rename).
"""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from edgetune.common.errors import OutputError


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes the renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[IO], None] | bytes | str, mode: int = 0o644) -> None:
    """Write `path` through a temporary sibling: `write` is the content, or a function filling a binary file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(write):
                write(f)
            else:
                f.write(write.encode() if isinstance(write, str) else write)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    """Write `data` as indented JSON, atomically."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """Write one JSON object per line, atomically."""
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary sibling path of `path` for a writer that opens files itself; rename it on success.

    On error the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_path(Path(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(out: Path, purpose: str = "writing") -> Iterator[Path]:
    """Yield a temporary sibling of `out` to fill; on success it replaces `out`, on error it is removed.

    Every file in the folder is fsynced before the rename, and the parent after it. An
    OSError on the way (disk full, read-only folder) becomes a one-line OutputError.
    """
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{purpose}-"))
    except OSError as e:
        raise OutputError(out, e) from None
    try:
        yield tmp
        tmp.chmod(0o755)
        for path in sorted(tmp.rglob("*"), reverse=True):  # files before the folders holding them
            fsync_path(path)
        fsync_path(tmp)
        old = tmp.with_name(tmp.name + ".old")
        if out.exists():
            out.rename(old)  # moved aside, not deleted, until the new folder is in place
        tmp.rename(out)
        fsync_path(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:  # a full disk, a read-only folder: bad luck or bad input, not a bug
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(out, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
