"""Side-by-side timing: warm-up, then round-robin repeats so machine noise hits every candidate alike.

On CPU a call is timed with ``time.perf_counter``; on CUDA with a pair of ``torch.cuda.Event``s
around the call after a ``synchronize`` (the host clock would only see the kernel launches).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes on ``device`` (all its queued GPU work included)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    start_s = time.perf_counter()
    fn()
    return time.perf_counter() - start_s


def time_interleaved(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """Per-candidate call times in seconds, ``repeats`` each.

    Every repeat runs each candidate once, starting one further along the list each time, so no
    candidate is always the first after a pause or always follows the same neighbour. The garbage
    collector is paused during the repeats so that a collection is not billed to whoever triggers it.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not candidates:
        raise ValueError("nothing to time: candidates is empty")
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(time_call(candidates[name], device))
            gc.collect()
    finally:
        if was_enabled:
            gc.enable()
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Per-repeat ratios of two candidates timed in the same repeats (e.g. reference time / new time).

    Their median is the speedup estimate: the two calls of one repeat ran seconds apart, so load
    that drifts over the run (another job starting) cancels in each ratio.
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"need equally many samples, got {len(numerator)} and {len(denominator)}")
    return [n / d for n, d in zip(numerator, denominator)]
