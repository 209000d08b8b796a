"""Folders that appear whole or not at all: build in a temporary sibling, then rename."""

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_folder(out: Path, purpose: str = "writing") -> Iterator[Path]:
    """Yield a temporary sibling of `out` to fill; on success it replaces `out`, on error it is removed.

    An interrupted write leaves `out` as it was (absent, or the previous version).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{purpose}-"))
    try:
        yield tmp
        tmp.chmod(0o755)
        old = tmp.with_name(tmp.name + ".old")
        if out.exists():
            out.rename(old)  # moved aside, not deleted, until the new folder is in place
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
