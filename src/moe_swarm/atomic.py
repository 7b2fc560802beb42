"""Atomic file writes: a reader (or a process killed mid-write) never sees a torn file.

Every writer here does the same four steps: write to a temporary file in the target's own folder,
flush + fsync, ``os.replace`` it over the target (atomic on POSIX within one filesystem), then fsync
the folder so the rename itself survives a power loss. The temporary file lives next to the
target, not in ``/tmp``: in containers ``/tmp`` and a mounted volume are different filesystems and
the final step would be a copy, not a rename.

Files get the usual ``0666 & ~umask`` mode (a bare ``mkstemp`` file is 0600, unreadable to a
sidecar that runs as another user).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_torch_save", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]


def _file_mode() -> int:
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back, once, at import
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (best effort: some filesystems cannot open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", *, durable: bool = True, remove_stale: bool = False
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was. ``durable=False``
    skips the fsyncs (still atomic, not crash-durable). ``remove_stale=True`` first deletes
    temporary files a killed writer of the same path left behind (only for paths with one writer).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if remove_stale:
        for stale in path.parent.glob(f"{_temp_prefix(path)}*.tmp"):
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), _FILE_MODE)
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb", durable=durable) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", durable=durable) as f:
        f.write(text)


def atomic_torch_save(obj: Any, path: str | os.PathLike, *, remove_stale: bool = False) -> None:
    """``torch.save(obj)`` to ``path`` atomically (used for every checkpoint this project writes)."""
    import torch

    with atomic_open(path, "wb", remove_stale=remove_stale) as f:
        torch.save(obj, f)
