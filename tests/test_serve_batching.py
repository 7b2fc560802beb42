"""The dynamic batcher on a real event loop with a real worker thread."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from moe_swarm.control.batching import DynamicBatcher
from moe_swarm.control.errors import Unavailable


class Recorder:
    def __init__(self, fail_on=None):
        self.calls = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, key, items):
        with self.lock:
            self.calls.append((key, list(items)))
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [(key, x * 2) for x in items]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def test_concurrent_requests_share_batches_up_to_the_limit():
    rec = Recorder()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = DynamicBatcher(rec, max_batch_size=8, max_delay_s=0.2, executor=pool)
            out = await asyncio.gather(*(b.submit("k", i) for i in range(20)))
            await b.close()
            return out, b.stats

    out, stats = run(main())
    assert [r for r, _ in out] == [("k", 2 * i) for i in range(20)]
    sizes = [len(items) for _, items in rec.calls]
    assert sum(sizes) == 20 and max(sizes) <= 8 and len(sizes) < 20
    batch_of = {x: len(items) for _, items in rec.calls for x in items}
    assert [size for _, size in out] == [batch_of[i] for i in range(20)]  # each caller learns its batch size
    assert stats.items == 20 and stats.largest == max(sizes)


def test_keys_never_share_a_call():
    rec = Recorder()

    async def main():
        b = DynamicBatcher(rec, max_batch_size=16, max_delay_s=0.2)
        out = await asyncio.gather(*(b.submit(i % 3, i) for i in range(12)))
        await b.close()
        return out

    out = run(main())
    assert [r for r, _ in out] == [(i % 3, 2 * i) for i in range(12)]
    for key, items in rec.calls:
        assert all(x % 3 == key for x in items)


def test_a_failing_batch_fails_its_members_only_and_the_batcher_keeps_working():
    rec = Recorder(fail_on=3)

    async def main():
        b = DynamicBatcher(rec, max_batch_size=4, max_delay_s=0.2)
        results = await asyncio.gather(*(b.submit("k", i) for i in range(4)), return_exceptions=True)
        later = await b.submit("k", 10)
        await b.close()
        return results, later

    results, later = run(main())
    assert all(isinstance(r, ValueError) and "bad item 3" in str(r) for r in results)
    assert later == (("k", 20), 1)


def test_disabled_batching_runs_every_request_alone():
    rec = Recorder()

    async def main():
        b = DynamicBatcher(rec, max_batch_size=8, max_delay_s=0.2, enabled=False)
        return await asyncio.gather(*(b.submit("k", i) for i in range(5)))

    out = run(main())
    assert [size for _, size in out] == [1] * 5 and all(len(items) == 1 for _, items in rec.calls)


def test_cancelled_callers_are_skipped_and_close_refuses_new_work():
    started = threading.Event()
    release = threading.Event()
    calls = []

    def slow(key, items):
        calls.append(list(items))
        started.set()
        release.wait(10)
        return items

    async def main():
        b = DynamicBatcher(slow, max_batch_size=4, max_delay_s=0.0)
        first = asyncio.ensure_future(b.submit("k", 1))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        doomed = asyncio.ensure_future(b.submit("k", 2))  # queued behind the running batch
        kept = asyncio.ensure_future(b.submit("k", 3))
        await asyncio.sleep(0.05)
        doomed.cancel()
        release.set()
        assert await first == (1, 1)
        assert await kept == (3, 1)
        await b.close()
        with pytest.raises(Unavailable):
            await b.submit("k", 4)

    run(main())
    assert calls == [[1], [3]]


@pytest.mark.parametrize(("size", "delay"), [(0, 0.1), (4, -1.0)])
def test_bad_settings(size, delay):
    with pytest.raises(ValueError):
        DynamicBatcher(lambda k, x: x, max_batch_size=size, max_delay_s=delay)
