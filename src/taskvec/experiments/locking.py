"""One run per output directory: an exclusive ``flock`` on a lock file inside it.

The operating system releases a ``flock`` when its process dies, however it dies (``kill -9``
included), so a crashed run never leaves a stale lock: the next run takes it at once. The holder
writes its PID into the file so that a refused run can say who holds the directory. The file is
removed when the holder finishes; a process that was waiting on a file removed meanwhile notices (its
open file is no longer the one at the path) and takes the lock again on the new file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from taskvec.errors import OutputDirectoryError

try:  # POSIX only; elsewhere runs are not locked (with a warning)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_FILE = ".taskvec.lock"


class OutputDirectoryLockedError(OutputDirectoryError):
    """Another live taskvec run holds the output directory."""


def lock_holder(out_dir: Path) -> str:
    """The PID written in ``out_dir``'s lock file ("unknown" when unreadable)."""
    try:
        return (out_dir / LOCK_FILE).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def _acquire(out_dir: Path, wait: bool) -> int:
    path = out_dir / LOCK_FILE
    announced = False
    while True:
        out_dir.mkdir(parents=True, exist_ok=True)  # again: a finished holder removes a directory it left empty
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # removed between the two calls
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = lock_holder(out_dir)
                if not wait:
                    raise OutputDirectoryLockedError(
                        f"output directory {str(out_dir)!r} is in use by another taskvec run (pid {holder}); "
                        "wait for it to finish, choose another --out, or pass --wait to queue behind it"
                    ) from None
                if not announced:
                    logger.warning("output directory %s is in use by pid %s: waiting for it", out_dir, holder)
                    announced = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the previous holder removed the file while we waited: lock the new one
        time.sleep(0.01)


@contextlib.contextmanager
def output_dir_lock(out_dir: str | os.PathLike, wait: bool = False) -> Iterator[Path]:
    """Hold ``out_dir`` (created when missing) for one run; refuse, or with ``wait`` block, while another
    process holds it. A directory this call created and left empty is removed again on exit."""
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirectoryError(f"output directory {str(out_dir)!r} is not writable: {exc.strerror or exc}") from exc
    if fcntl is None:  # pragma: no cover
        logger.warning("file locking is not available on this platform: concurrent runs are not detected")
        yield out_dir
        return
    try:
        fd = _acquire(out_dir, wait)
    except OSError as exc:
        raise OutputDirectoryError(f"output directory {str(out_dir)!r} is not writable: {exc.strerror or exc}") from exc
    try:
        yield out_dir
    finally:
        with contextlib.suppress(OSError):
            (out_dir / LOCK_FILE).unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only succeeds when nothing was written
