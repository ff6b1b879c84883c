"""User-facing errors.

A :class:`UserError` is bad input: the CLI prints its one-line message and exits with code 2, with no
traceback. Any other exception is a programming error and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class UserError(Exception):
    """Bad input from the user; the message says what is wrong and how to fix it."""


class PluginError(UserError):
    """A plugin is unknown, duplicated, of the wrong type, or failed to load."""


class ParamError(UserError):
    """A plugin parameter has a bad name, type or value."""


class DataError(UserError):
    """A dataset or model folder is missing, incomplete or corrupt."""


class ConstraintError(UserError):
    """A defense produced a fine-tuning constraint that the chosen attack cannot honour."""


class StaleResultError(UserError):
    """A results file holds a finished cell made with a different base model or metric weights."""


class StorageError(UserError):
    """A disk filled up, a quota or the file-size limit (``ulimit -f``) was hit, or a file could not be written.

    The message names the path, the space needed and the space free, where finished work was kept (if it was),
    and how to fix it. Raised by the stage cache (the half-built stage is removed) and by the results store (the
    record is kept in a pending side file that the next write merges).
    """


_SPACE_REASONS = {
    errno.ENOSPC: "no space left on device",
    getattr(errno, "EDQUOT", -1): "disk quota exceeded",
}
SPACE_ERRNOS = frozenset((errno.ENOSPC, errno.EFBIG, *([errno.EDQUOT] if hasattr(errno, "EDQUOT") else [])))


def megabytes(n_bytes: float) -> str:
    """``12.3 MB`` (decimal megabytes; three decimals below 0.1 MB)."""
    mb = n_bytes / 1e6
    return f"{mb:.1f} MB" if mb >= 0.1 or mb == 0 else f"{mb:.3f} MB"


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent); None when unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def file_size_limit() -> int | None:
    """The soft ``RLIMIT_FSIZE`` (``ulimit -f``) in bytes, or None when unlimited or unknown."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def storage_error(exc: OSError, writing: str, free_at: str | os.PathLike, needed_bytes: int, fix: str,
                  kept: str | None = None) -> StorageError:
    """The one-line :class:`StorageError` for ``exc``, raised while ``writing`` (a phrase naming the path, e.g.
    "writing stage protect/ab12cd34ef56 under /x/cache"): what failed, the bytes it needed at least
    (``needed_bytes``: what it had written or tried to write), the bytes free at ``free_at``, where unsaved work
    was ``kept`` (a phrase, or None) and ``fix``. A file-size limit (``EFBIG``) names the limit instead of the
    space, and its fix is raising ``ulimit -f``.
    """
    if exc.errno == errno.EFBIG:
        limit = file_size_limit()
        reason = "file size limit (ulimit -f) reached"
        space = f"a file there needs more than {megabytes(limit)}" if limit is not None else "a file there is too large"
        fix = "raise the file size limit (ulimit -f unlimited)"
    else:
        reason = _SPACE_REASONS.get(exc.errno) or f"could not write ({exc.strerror or exc})"
        free = free_bytes(free_at)
        space = (f"needed at least {megabytes(needed_bytes)}; " if needed_bytes else "") + (
            f"{megabytes(free)} free there" if free is not None else "free space unknown")
    kept = f"; {kept}" if kept else ""
    return StorageError(f"{reason} while {writing} ({space}){kept}: {fix}".replace("\n", " "))


_SPACE_MESSAGES = {"no space left on device": errno.ENOSPC, "disk quota exceeded": errno.EDQUOT
                   if hasattr(errno, "EDQUOT") else errno.ENOSPC, "file too large": errno.EFBIG}


def space_errno(exc: BaseException | None) -> int | None:
    """ENOSPC, EDQUOT or EFBIG when ``exc`` (or an exception it was raised from) is a full disk, a quota or the
    file-size limit, else None. Libraries that wrap the OSError (safetensors, numpy) are recognised by the
    strerror text in their message."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS:
            return exc.errno
        text = str(exc).lower()
        for words, code in _SPACE_MESSAGES.items():
            if words in text:
                return code
        exc = exc.__cause__ or exc.__context__
    return None
