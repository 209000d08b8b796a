"""One training process per run folder: an exclusive lock beside the folder, named after it.

`runs/NAME` is locked through `runs/.NAME.lock`, which holds the holder's PID. The lock
is the kernel's (`flock`), so it dies with its process: a lock left by a killed process
is simply free, and the next run takes it over. A second process is refused at once,
naming the holder's PID. The lock file sits beside the run folder, not in it, so a run
refused before it starts leaves no folder behind; the holder removes it when done.
"""

import fcntl
import os
from pathlib import Path

from edgetune.common.errors import TrainingError


class RunLock:
    """`with RunLock(out):` holds the run folder `out` for this process, or raises TrainingError."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out.parent / f".{self.out.name}.lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock now or refuse; retries only if the file was replaced while taking it."""
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrainingError(f"{self.out.parent}: cannot create the run folder's parent ({e.strerror})") from None
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as e:
                raise TrainingError(f"{self.path}: cannot create the run lock ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise TrainingError(
                    f"{self.out}: in use by process {holder} (another edgetune train on this run folder)"
                ) from None
            if _same_file(fd, self.path):  # not unlinked by a holder that was just finishing
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return
            os.close(fd)
        raise TrainingError(f"{self.path}: the run lock keeps changing hands; try again")

    def release(self) -> None:
        """Remove the lock file and let go (unlink first, so a waiting opener re-checks)."""
        if self.fd is None:
            return
        if _same_file(self.fd, self.path):
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def _read_pid(fd: int) -> str:
    """The PID written in a lock file, as text ("unknown" if there is none)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
