"""An exclusive lock on a run directory: two processes never train into the same run id at once.

``RunLock(layout.lock)`` takes an advisory ``flock`` on ``<run_dir>/run.lock`` and writes the
holder (pid, host, start time, command) into it. The kernel drops the lock when the process
exits, however it exits, so a lock left by a killed run is stale by construction: the next run
takes it and says whose it was. As a second line of defence (filesystems where ``flock`` is a
no-op) a holder recorded on this host whose pid is still alive also counts as held.

The file stays after release (emptied): deleting it would let a third process lock a new file
while a second still holds the old, unlinked one. Under DDP only global rank 0 takes the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from moe_swarm.errors import UserError

__all__ = ["RunLock", "RunLockError"]


class RunLockError(UserError):
    """Another live process holds the run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown process"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')} (since {when}: {holder.get('command', '?')})"
    )


class RunLock:
    """``with RunLock(path, run_id):`` holds the run directory; raises :class:`RunLockError` if taken."""

    def __init__(self, path: str | os.PathLike, run_id: str) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._fd: int | None = None
        self.previous_holder: dict[str, Any] = {}

    def _read(self, fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        try:
            data = json.loads(raw.decode() or "{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise self._held(holder) from None
        holder = self._read(fd)
        if holder and holder.get("host") == socket.gethostname() and holder.get("pid") != os.getpid():
            pid = int(holder.get("pid") or 0)
            if pid > 0 and _pid_alive(pid):  # flock not honoured here, but the holder lives
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise self._held(holder)
        self.previous_holder = holder
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "run_id": self.run_id,
            "command": " ".join(sys.argv)[:300],
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _held(self, holder: dict[str, Any]) -> RunLockError:
        return RunLockError(
            f"run {self.run_id!r} is in use by {_describe(holder)} (lock {self.path}). Two runs with one id "
            "would write the same checkpoints and summary: wait for it to finish, stop it (SIGTERM saves a "
            "checkpoint), or start this run with another run_id."
        )

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
