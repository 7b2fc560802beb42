"""The process supervisor: runs job children, streams their output, stops them gracefully.

Children are started with ``asyncio.create_subprocess_exec`` (fork + exec of a fresh interpreter, never a
fork of this process that holds server state), each in a new session so it leads its own process group.
Their stdout and stderr go through the supervisor into a log file; lines of the form
``MOE_SWARM_METRICS {"train/loss": 1.2, ...}`` are handed to a callback instead of the log tail. Stop is
graceful: SIGTERM to the child (training saves ``last.ckpt`` and exits), SIGKILL to its group only after
a grace period. The supervisor knows processes, not jobs: what an exit means is the job kind's business.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("moe_swarm.control.supervisor")

LOG_TAIL_LINES = 40
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ChildExit:
    """How a child ended: its exit status (negative = killed by that signal) and its last log lines."""

    code: int
    tail: list[str]


@dataclass(frozen=True)
class ChildHooks:
    """What the supervisor tells its owner while a child runs (all called on the event loop)."""

    started: Callable[[int], None]  # the child's pid, once it exists
    metrics: Callable[[dict[str, float]], None]  # one parsed metrics line
    output: Callable[[], None]  # after each chunk of output (wake log followers)


class ProcessSupervisor:
    """Children by key (a job id); one event loop uses it."""

    def __init__(self, parse_metrics: Callable[[str], dict[str, float] | None]) -> None:
        self.parse_metrics = parse_metrics
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._helpers: set[asyncio.Task] = set()

    async def run(
        self, key: str, argv: list[str], *, env: dict[str, str], cwd: str, log_path: Path, hooks: ChildHooks
    ) -> ChildExit:
        """Start ``argv``, stream its output into ``log_path`` until it exits; OSError if it cannot start."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        self._procs[key] = proc
        log.info("child %s started: pid %d: %s", key, proc.pid, " ".join(argv))
        hooks.started(proc.pid)
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        try:
            await self._pump(proc, log_path, tail, hooks)
        except Exception as exc:  # e.g. the log's disk is full: the child cannot be supervised any more
            log.exception("child %s: reading its output failed; stopping it", key)
            tail.append(f"moe-swarm-serve: stopped supervising the child: {exc!r}")
            if proc.returncode is None:
                self._kill_group(proc.pid)
        code = await proc.wait()
        self._procs.pop(key, None)
        return ChildExit(code, list(tail))

    def stop(self, key: str, grace_s: float) -> None:
        """SIGTERM the child now, SIGKILL its process group if it is still there after ``grace_s``."""
        proc = self._procs.get(key)
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        task = asyncio.get_running_loop().create_task(self._kill_after(key, proc, grace_s))
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    def kill_remaining(self, why: str) -> None:
        """SIGKILL the group of every child that is still running (shutdown after the grace period)."""
        for key, proc in list(self._procs.items()):
            if proc.returncode is None:
                log.warning("child %s %s; killing its process group", key, why)
                self._kill_group(proc.pid)

    async def _pump(
        self, proc: asyncio.subprocess.Process, path: Path, tail: collections.deque, hooks: ChildHooks
    ) -> None:
        assert proc.stdout is not None
        pending = b""
        with open(path, "ab") as out:
            while True:
                chunk = await proc.stdout.read(READ_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                out.flush()
                pending += chunk
                *lines, pending = pending.replace(b"\r", b"\n").split(b"\n")
                if len(pending) > READ_CHUNK:  # a line without end: keep its start only
                    lines.append(pending[:READ_CHUNK])
                    pending = b""
                for raw in lines:
                    line = raw.decode("utf-8", errors="replace").rstrip()
                    if not line:
                        continue
                    metrics = self.parse_metrics(line)
                    if metrics is None:
                        tail.append(line)
                    elif metrics:
                        hooks.metrics(metrics)
                hooks.output()
            if pending:
                line = pending.decode("utf-8", errors="replace").rstrip()
                if line:
                    tail.append(line)

    async def _kill_after(self, key: str, proc: asyncio.subprocess.Process, grace_s: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), grace_s)
            return
        if proc.returncode is None:
            log.warning("child %s ignored SIGTERM for %.0f s; killing its process group", key, grace_s)
            self._kill_group(proc.pid)

    @staticmethod
    def _kill_group(pgid: int) -> None:
        """SIGKILL the child's own process group (it was started with a new session, pgid == pid).

        Only called while the child has not been reaped, so the group id is still ours."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


ORPHAN_GRACE_S = 60.0  # at most this long for a previous sidecar's child to checkpoint and exit


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status  # a zombie has exited; whoever adopted it reaps it


def stop_orphan(pid: int, marker: str, grace_s: float) -> bool:
    """Stop a child a previous sidecar left running (it outlived a crash of its parent): SIGTERM, so
    training saves its checkpoint and exits, then SIGKILL of its process group after ``grace_s`` (at most
    ORPHAN_GRACE_S). Only when its command line still holds ``marker`` (e.g. ``run_id=X``), so a reused
    pid is never touched. Blocking; returns True when such a child was found."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if marker.encode() not in cmdline.split(b"\0") or _gone(pid):
        return False
    log.warning("a child of the previous sidecar is still running (pid %d); stopping it", pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + min(grace_s, ORPHAN_GRACE_S)
    while time.monotonic() < deadline and not _gone(pid):
        time.sleep(0.1)
    if not _gone(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not _gone(pid):
            time.sleep(0.1)
    return True


def tail_offset(path: Path, lines: int) -> int:
    """Byte offset where the last ``lines`` lines of ``path`` start (looking back at most 1 MiB)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    window = min(size, 1024 * 1024)
    with open(path, "rb") as f:
        f.seek(size - window)
        data = f.read(window)
    cut = len(data)
    if data.endswith(b"\n"):
        cut -= 1
    for _ in range(lines):
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0:
            return size - window
    return size - window + cut + 1
