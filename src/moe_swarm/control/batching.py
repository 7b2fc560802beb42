"""Dynamic batching: concurrent requests with the same key share one batched model call.

The first request of a batch waits at most ``max_delay_s`` for company; the batch closes early at
``max_batch_size``. One batch runs at a time in a worker thread (the model is the bottleneck, and the event
loop stays free); requests that arrive meanwhile form the next batch. Requests with different keys (other
model or swarm settings) never share a call. With batching off, every request is its own call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from moe_swarm.control.errors import Unavailable

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Pending:
    key: Hashable
    item: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0

    @property
    def mean_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class DynamicBatcher(Generic[Item, Result]):
    """``await submit(key, item)`` -> (result, size of the batch it ran in).

    ``run_batch(key, items)`` runs in ``executor`` and returns one result per item, in order.
    """

    def __init__(
        self,
        run_batch: Callable[[Hashable, list[Item]], Sequence[Result]],
        *,
        max_batch_size: int,
        max_delay_s: float,
        executor: Executor | None = None,
        enabled: bool = True,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.executor = executor
        self.enabled = enabled
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._closed = False
        self._busy = False

    async def submit(self, key: Hashable, item: Item) -> tuple[Result, int]:
        if self._closed:
            raise Unavailable("the server is shutting down and takes no new inference requests")
        loop = asyncio.get_running_loop()
        if not self.enabled:
            results = await loop.run_in_executor(self.executor, self._run, key, [item])
            return results[0], 1
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._work())
        pending = _Pending(key, item, loop.create_future())
        await self._queue.put(pending)
        return await pending.future

    def _run(self, key: Hashable, items: list[Item]) -> Sequence[Result]:
        results = self.run_batch(key, items)
        if len(results) != len(items):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.largest = max(self.stats.largest, len(items))
        if self.on_batch is not None:
            self.on_batch(len(items))
        return results

    async def _collect(self) -> list[_Pending]:
        assert self._queue is not None
        first = await self._queue.get()
        batch = [first]
        deadline = time.monotonic() + self.max_delay_s
        while len(batch) < self.max_batch_size:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    batch.append(self._queue.get_nowait())
                else:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self._busy = True
            try:
                await self._run_groups(loop, batch)
            finally:
                self._busy = False

    async def _run_groups(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        groups: dict[Hashable, list[_Pending]] = {}
        for p in batch:
            if not p.future.done():  # the caller went away (cancelled): skip its work
                groups.setdefault(p.key, []).append(p)
        for key, members in groups.items():
            try:
                results = await loop.run_in_executor(self.executor, self._run, key, [m.item for m in members])
            except Exception as exc:
                for m in members:
                    if not m.future.done():
                        m.future.set_exception(exc)
                continue
            for m, r in zip(members, results):
                if not m.future.done():
                    m.future.set_result((r, len(members)))

    async def close(self) -> None:
        """Refuse new requests, let queued ones finish, stop the worker."""
        self._closed = True
        if self._queue is not None:
            deadline = time.monotonic() + 60.0
            while (self._busy or not self._queue.empty()) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
