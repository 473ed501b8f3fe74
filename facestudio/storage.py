"""Writing into the library safely: clear errors for full or read-only disks, crash-safe staging.

Every stage that writes (recording, fusion, the catalog, the CLI) reports a full or read-only
disk through :func:`storage_error`, so the user reads one sentence naming the problem and the
path instead of ``[Errno 28] No space left on device`` without a file name, or a traceback.

Work that appears in the library by a final rename (a fusion, a purge) is built in a
:func:`staging_dir`. Such a folder is locked while in use, so the next run can tell the
leftovers of a killed process from another process's work in progress and delete them: a
crash costs disk space only until the next run, and never leaves a person's data behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; stale staging folders are then never reclaimed.
    fcntl = None  # type: ignore[assignment]

# EFBIG too: a file larger than the filesystem (FAT32) or the process (RLIMIT_FSIZE) allows.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


class StorageError(OSError):
    """Writing failed because the disk is full or the library folder is read-only.

    ``errno`` is the original error number; the message names the path and what to do.
    """


def disk_problem(code: int | None, path: Any, detail: str = "") -> str | None:
    """The user-facing sentence for a full (``DISK_FULL``) or read-only (``READ_ONLY``) disk
    while writing ``path``; None for any other error number."""
    why = f" ({detail})" if detail else ""
    if code in DISK_FULL:
        return f"not enough space on the disk to write {path}{why}; free some space and try again"
    if code in READ_ONLY:
        return (f"library folder is read-only: cannot write {path}{why}; choose a writable "
                "library (--library) or fix its permissions")
    return None


def storage_error(exc: OSError, path: Any = None) -> OSError:
    """``exc`` as a :class:`StorageError` when it means a full or read-only disk, else ``exc``.

    ``path`` is what was being written, used when the error itself names no file (a failed
    ``write()`` never does).
    """
    if isinstance(exc, StorageError):
        return exc
    message = disk_problem(exc.errno, exc.filename or path or "library files", exc.strerror or "")
    if message is None:
        return exc
    clear = StorageError(message)
    clear.errno = exc.errno   # not strerror: OSError's str() would then drop the message
    return clear


@contextlib.contextmanager
def writing(path: Any) -> Iterator[None]:
    """Re-raise a full or read-only disk inside the block as one :class:`StorageError` about
    ``path`` (the original OSError is its ``__cause__``); other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        clear = storage_error(exc, path)
        if clear is exc:
            raise
        raise clear from exc


def try_lock(fd: int) -> bool | None:
    """Take an exclusive, non-blocking flock on ``fd``: True when taken, False when another
    holder has it, None where locks are unavailable (Windows, some network filesystems)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def remove_stale(parent: Path) -> int:
    """Delete the folders under ``parent`` that no live :func:`staging_dir` holds; returns how many.

    A folder is stale when its lock can be taken: the process that made it has ended. Folders
    renamed there without a lock (fusion's ``-old``) are garbage by construction. Where locks
    are unavailable nothing is deleted: a live folder cannot be told from a stale one.
    """
    if fcntl is None:
        return 0
    removed = 0
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return 0
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:
            continue   # removed meanwhile
        try:
            if try_lock(fd) is True:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        finally:
            os.close(fd)
    return removed


def staging_parent(target: Path) -> Path:
    """Where work bound for folder ``target`` is staged: ``.NAME.partial`` beside it, so
    readers of ``target`` never see it and a rename into ``target`` stays on one filesystem."""
    target = Path(target)
    return target.parent / f".{target.name}.partial"


@contextlib.contextmanager
def staging_dir(parent: Path) -> Iterator[Path]:
    """A new private folder ``parent/<random>`` that is locked while the block runs.

    Stale folders of killed processes under ``parent`` are removed first. The folder is
    deleted on exit unless the block renamed it away; ``parent`` too when it is left empty.
    """
    parent = Path(parent)
    remove_stale(parent)
    fd = -1
    while True:
        path = parent / uuid.uuid4().hex
        path.mkdir(parents=True)
        if fcntl is None:
            break
        # A concurrent remove_stale may lock and delete the new folder before we lock it.
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(path, os.O_RDONLY)
            if try_lock(fd) is not False and os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        if fd >= 0:
            os.close(fd)
            fd = -1
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            parent.rmdir()   # fails while another process stages there: theirs to remove
