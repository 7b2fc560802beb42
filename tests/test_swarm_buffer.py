"""ThoughtBuffer: concurrent writers lose nothing and never expose a torn record."""

import sys
import threading
import time

import pytest
import torch

from moe_swarm.swarm import ThoughtBuffer, ThoughtRecord

D = 8


def make_record(writer: int, i: int) -> ThoughtRecord:
    """Every field derives from one value, so a record mixing two writes is detectable."""
    value = writer * 1000 + i
    return ThoughtRecord(
        problem=writer % 3,
        agent=i,
        round=writer,
        thought=torch.full((D,), float(value)),
        answer=str(value),
        score=float(value),
        logprob=-float(value),
        text=f"t{value}",
        num_tokens=value % 7 + 1,
    )


def assert_consistent(r: ThoughtRecord) -> None:
    value = r.round * 1000 + r.agent
    assert r.problem == r.round % 3
    assert r.answer == str(value) and r.text == f"t{value}"
    assert r.score == float(value) and r.logprob == -float(value)
    assert r.num_tokens == value % 7 + 1
    assert torch.equal(r.thought, torch.full((D,), float(value)))


def test_concurrent_writers_and_readers_keep_every_record_intact(frequent_thread_switches):
    buf = ThoughtBuffer()
    writers, per_writer, batch = 8, 500, 5
    start = threading.Barrier(writers + 2)
    errors: list[BaseException] = []
    done = threading.Event()

    def write(w: int) -> None:
        try:
            start.wait(timeout=10)
            for i in range(0, per_writer, batch):
                if i % 2:
                    buf.extend(make_record(w, j) for j in range(i, i + batch))
                else:
                    for j in range(i, i + batch):
                        buf.add(make_record(w, j))
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)

    def read() -> None:
        try:
            start.wait(timeout=10)
            last = 0
            for _ in range(2000):
                snap = buf.snapshot()
                assert len(snap) >= last
                last = len(snap)
                for r in snap[-20:]:
                    assert_consistent(r)
                for r in buf.top_k(1, 3):
                    assert_consistent(r)
                if done.is_set():
                    break
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads[:writers]:
        t.join(timeout=60)
    done.set()
    for t in threads[writers:]:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors[0]

    snap = buf.snapshot()
    assert len(buf) == len(snap) == writers * per_writer
    seen = {(r.round, r.agent) for r in snap}
    assert seen == {(w, i) for w in range(writers) for i in range(per_writer)}
    for r in snap:
        assert_consistent(r)
    # Per-writer order is preserved, and the per-problem index agrees with the global list.
    for w in range(writers):
        assert [r.agent for r in snap if r.round == w] == list(range(per_writer))
    for p in range(3):
        assert buf.snapshot(p) == [r for r in snap if r.problem == p]
    assert sorted(buf.problems()) == [0, 1, 2]


@pytest.fixture
def frequent_thread_switches():
    """Make the interpreter switch threads every microsecond, so races show up in a short test."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def test_extend_is_atomic_for_readers(frequent_thread_switches):
    buf = ThoughtBuffer()
    stop = threading.Event()
    partial = []

    def read():
        deadline = time.monotonic() + 20
        for _ in range(10**7):  # until the writer is done (bounded by count and time)
            n = len(buf.snapshot())
            if n % 2000:
                partial.append(n)
            if stop.is_set() or time.monotonic() > deadline:
                break

    t = threading.Thread(target=read)
    t.start()
    for b in range(10):  # big batches: a non-atomic extend would be visible half-done
        buf.extend(make_record(b, i) for i in range(2000))
    stop.set()
    t.join(timeout=30)
    assert not partial, f"a reader saw a half-added batch: sizes {partial[:5]}"
    assert len(buf) == 20000


def test_top_k_orders_by_score_with_stable_ties_and_round_filter():
    buf = ThoughtBuffer()
    scores = [0.5, 0.9, 0.1, 0.9, 0.7]
    for i, s in enumerate(scores):
        buf.add(ThoughtRecord("p", i, i % 2, torch.zeros(D), str(i), s, 0.0))
    buf.add(ThoughtRecord("other", 0, 0, torch.zeros(D), "x", 5.0, 0.0))
    assert [r.agent for r in buf.top_k("p", 3)] == [1, 3, 4]
    assert [r.agent for r in buf.top_k("p", 10, round=0)] == [4, 0, 2]
    assert buf.top_k("missing", 2) == []
    assert buf.top_k("p", 0) == []
    with pytest.raises(ValueError, match="k must be"):
        buf.top_k("p", -1)


def test_buffer_rejects_non_records_and_clears():
    buf = ThoughtBuffer()
    with pytest.raises(TypeError, match="ThoughtRecord"):
        buf.add({"answer": "1"})
    with pytest.raises(TypeError, match="ThoughtRecord"):
        buf.extend([make_record(0, 0), "nope"])
    assert len(buf) == 0, "a rejected extend must add nothing"
    buf.add(make_record(0, 0))
    buf.clear()
    assert len(buf) == 0 and buf.problems() == []
