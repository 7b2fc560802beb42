"""Telling callers that a job changed: per-job wake-up signals, the metric events a watcher replays, and
the three readers built on them (wait for the end, watch state and metrics, tail the log); no transport.

The job service (:mod:`moe_swarm.control.jobs`) changes jobs and calls :meth:`JobEvents.notify` /
:meth:`JobEvents.record_metrics`; every reader wakes at least once a second, so a missed signal costs a
second, never a hang.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from moe_swarm.control.errors import InvalidArgument
from moe_swarm.control.registry import JobRecord, JobRegistry
from moe_swarm.control.supervisor import READ_CHUNK, tail_offset

STEP_METRIC = "trainer/global_step"
MAX_METRIC_EVENTS = 2000
WAKE_INTERVAL_S = 1.0  # upper bound on how long a watcher sleeps without re-checking


class JobEvents:
    """Signals and metric events per job. ``get`` raises NotFound for an unknown job; ``log_path`` is
    where a job's log lies when its record names none."""

    def __init__(
        self, registry: JobRegistry, get: Callable[[str], JobRecord], log_path: Callable[[str], Path]
    ) -> None:
        self.registry = registry
        self.get = get
        self.log_path = log_path
        self._signals: dict[str, asyncio.Event] = {}
        self._metric_events: dict[str, collections.deque] = {}
        self._metric_seq = 0

    def signal(self, job_id: str) -> asyncio.Event:
        """The event the next :meth:`notify` of this job sets (take it before reading the job)."""
        return self._signals.setdefault(job_id, asyncio.Event())

    def notify(self, job_id: str) -> None:
        """Wake every reader of the job (it changed state, logged, or reported metrics)."""
        event = self._signals.pop(job_id, None)
        if event is not None:
            event.set()

    def record_metrics(self, job_id: str, metrics: dict[str, float]) -> None:
        """Merge a metrics line into the job; publish a METRICS event with what is new in it.

        Training repeats its latest validation metrics in every step's line; an event carries only the
        values that changed (plus the step), so watchers see each validation result once, not as a
        stale copy every few steps. The job's ``metrics`` map always holds every latest value.
        """
        rec = self.registry.get(job_id)
        if rec is None or rec.state.terminal:
            return
        fresh = {k: v for k, v in metrics.items() if rec.metrics.get(k) != v or k == STEP_METRIC}
        merged = dict(rec.metrics)
        merged.update(metrics)
        self.registry.update(job_id, durable=False, metrics=merged)
        if not fresh or (set(fresh) == {STEP_METRIC} and len(metrics) > 1):
            return  # nothing new besides the step
        self._metric_seq += 1
        q = self._metric_events.setdefault(job_id, collections.deque(maxlen=MAX_METRIC_EVENTS))
        q.append((self._metric_seq, time.time(), fresh))

    async def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Until the job is finished (or ``timeout`` seconds, then the job as it is)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = self.signal(job_id)
            rec = self.get(job_id)
            if rec.state.terminal:
                return rec
            left = WAKE_INTERVAL_S if deadline is None else min(WAKE_INTERVAL_S, deadline - time.monotonic())
            if left <= 0:
                return rec
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), left)

    async def watch(self, job_id: str) -> AsyncIterator[tuple[str, JobRecord, dict[str, float]]]:
        """("SNAPSHOT", job, {}), then ("METRICS", job, metrics) / ("STATE", job, {}) until finished."""
        rec = self.get(job_id)
        events = self._metric_events.get(job_id)
        last_seq = events[-1][0] if events else 0
        last_state = rec.state
        yield "SNAPSHOT", rec, {}
        while not last_state.terminal:
            event = self.signal(job_id)
            for seq, _t, metrics in list(self._metric_events.get(job_id, ())):
                if seq > last_seq:
                    last_seq = seq
                    yield "METRICS", rec, metrics
            if rec.state != last_state:
                last_state = rec.state
                yield "STATE", rec, {}
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), WAKE_INTERVAL_S)

    async def tail(
        self, job_id: str, follow: bool, tail_lines: int, start: int = 0
    ) -> AsyncIterator[tuple[int, str]]:
        """(byte offset, text) chunks of the job's log from byte ``start`` (or its last ``tail_lines``
        lines); with ``follow`` until the job is finished."""
        rec = self.get(job_id)
        if tail_lines < 0:
            raise InvalidArgument(f"tail_lines={tail_lines} is negative; pass 0 (whole log) or N > 0")
        if start < 0:
            raise InvalidArgument(f"offset={start} is negative; pass 0 (start of the log) or a byte offset")
        path = Path(rec.log_path or self.log_path(job_id))
        offset = tail_offset(path, tail_lines) if tail_lines else start
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            event = self.signal(job_id)
            data = b""
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
                f.seek(offset)
                data = f.read(READ_CHUNK)
            if data:
                text = decoder.decode(data)
                if text:
                    yield offset, text
                offset += len(data)
                continue
            if not follow or rec.state.terminal:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), WAKE_INTERVAL_S)
