"""Plurality and score-weighted plurality votes over canonical answers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class VoteResult:
    """The winner, its share of the total vote (the swarm's confidence) and every answer's tally."""

    answer: str
    share: float
    votes: dict[str, float]


def vote(answers: Sequence[str], weights: Sequence[float] | None = None) -> VoteResult:
    """Tally ``answers`` (already canonical), one vote each or ``weights[i]`` each.

    Ties go to the answer that appeared first in ``answers`` (record order: earlier rounds, then lower
    agent index), so the result is deterministic. With weights that are all zero the vote falls back
    to plain counts (a share of 0/0 means nothing). Weights must be finite and >= 0.
    """
    if len(answers) == 0:
        raise ValueError("cannot vote over zero answers")
    if weights is None:
        w = [1.0] * len(answers)
    else:
        w = [float(x) for x in weights]
        if len(w) != len(answers):
            raise ValueError(f"got {len(answers)} answers but {len(w)} weights")
        if any(not math.isfinite(x) or x < 0 for x in w):
            raise ValueError(f"vote weights must be finite and >= 0, got {w}")
        if sum(w) <= 0:
            w = [1.0] * len(answers)
    votes: dict[str, float] = {}
    for a, x in zip(answers, w):
        votes[a] = votes.get(a, 0.0) + x
    winner = max(votes, key=votes.__getitem__)  # dicts keep first-seen order; max keeps the first maximum
    return VoteResult(answer=winner, share=votes[winner] / sum(votes.values()), votes=votes)
