"""ThoughtBuffer: the swarm's shared blackboard of (thought vector, answer, score) records.

Records are frozen dataclasses that are built completely before they are published, and the buffer
appends and reads them under one lock, so concurrent writers (threads) can neither lose a record nor
expose a half-written one. Thought tensors are stored as given; treat them as read-only.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from torch import Tensor

from moe_swarm.swarm.agents import AgentSpec


@dataclass(frozen=True)
class ThoughtRecord:
    """What one agent produced for one problem in one round.

    ``thought``: (d_model,) final-layer hidden state, rescaled to the token-embedding norm.
    ``answer``: canonical answer (what votes are counted over); ``text``: the raw decoded text.
    ``score``: the non-negative weight used for weighted votes and resampling.
    ``logprob``: length-normalised sequence log-prob (mean per generated token, EOS included).
    """

    problem: Hashable
    agent: int
    round: int
    thought: Tensor
    answer: str
    score: float
    logprob: float
    text: str = ""
    num_tokens: int = 0
    spec: AgentSpec | None = None


class ThoughtBuffer:
    """Thread-safe append-only store of ``ThoughtRecord``s with per-problem queries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[ThoughtRecord] = []
        self._by_problem: dict[Hashable, list[ThoughtRecord]] = {}

    def add(self, record: ThoughtRecord) -> None:
        if not isinstance(record, ThoughtRecord):
            raise TypeError(f"ThoughtBuffer.add expects a ThoughtRecord, got {type(record).__name__}")
        with self._lock:
            self._records.append(record)
            self._by_problem.setdefault(record.problem, []).append(record)

    def extend(self, records: Iterable[ThoughtRecord]) -> None:
        """Add several records atomically: readers see all of them or none."""
        records = list(records)
        for r in records:
            if not isinstance(r, ThoughtRecord):
                raise TypeError(f"ThoughtBuffer.extend expects ThoughtRecords, got {type(r).__name__}")
        with self._lock:
            self._records.extend(records)
            for r in records:
                self._by_problem.setdefault(r.problem, []).append(r)

    def snapshot(self, problem: Hashable | None = None) -> list[ThoughtRecord]:
        """A copy of the records (of one problem, or all), in insertion order."""
        with self._lock:
            if problem is None:
                return list(self._records)
            return list(self._by_problem.get(problem, ()))

    def top_k(self, problem: Hashable, k: int, round: int | None = None) -> list[ThoughtRecord]:
        """The ``k`` highest-scoring records of ``problem`` (optionally of one round); ties keep insertion order."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        records = self.snapshot(problem)
        if round is not None:
            records = [r for r in records if r.round == round]
        return sorted(records, key=lambda r: -r.score)[:k]

    def problems(self) -> list[Hashable]:
        with self._lock:
            return list(self._by_problem)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._by_problem.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
