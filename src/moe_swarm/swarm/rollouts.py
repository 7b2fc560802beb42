"""Rollouts: run the swarm on training problems and label every record by exact match.

The result is what a value-head trainer (plain loop or LightningModule) consumes: thought vectors,
rewards and the problem each record belongs to (for group-relative advantages).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from moe_swarm.swarm.solver import SwarmResult, SwarmSolver
from moe_swarm.swarm.value import group_relative_advantages


@dataclass
class Rollouts:
    """Flattened records of a swarm run. Row i: ``thoughts[i]`` got ``rewards[i]`` (1.0 = exact match)."""

    thoughts: Tensor  # (N, d_model) normalised thought vectors, CPU
    rewards: Tensor  # (N,) float32 in {0, 1}
    group_ids: Tensor  # (N,) long: the problem of each record (offset by group_offset)
    rounds: Tensor  # (N,) long: the round that produced each record
    logprobs: Tensor  # (N,) length-normalised sequence log-probs
    results: list[SwarmResult] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    def __iter__(self):
        """Unpack as ``thoughts, rewards, group_ids = collect_rollouts(...)``."""
        return iter((self.thoughts, self.rewards, self.group_ids))

    def advantages(self, eps: float = 1e-6) -> Tensor:
        return group_relative_advantages(self.rewards, self.group_ids, eps)


def collect_rollouts(solver: SwarmSolver, problems: Sequence, task, group_offset: int = 0) -> Rollouts:
    """Solve ``problems`` (objects with ``prompt`` and ``answer``) and label each record with
    ``task.score(record.text, problem.answer)``.

    Every record of every round is kept. For unbiased value-head data use a config without early
    exit (``early_exit_share > 1``) so easy problems still contribute all rounds.
    """
    if not problems:
        raise ValueError("collect_rollouts needs at least one problem")
    results = solver.solve([p.prompt for p in problems])
    thoughts, rewards, groups, rounds, logprobs = [], [], [], [], []
    for g, (problem, result) in enumerate(zip(problems, results)):
        for r in result.records:
            thoughts.append(r.thought)
            rewards.append(1.0 if task.score(r.text, problem.answer) else 0.0)
            groups.append(group_offset + g)
            rounds.append(r.round)
            logprobs.append(r.logprob)
    return Rollouts(
        thoughts=torch.stack(thoughts).float(),
        rewards=torch.tensor(rewards, dtype=torch.float32),
        group_ids=torch.tensor(groups, dtype=torch.long),
        rounds=torch.tensor(rounds, dtype=torch.long),
        logprobs=torch.tensor(logprobs, dtype=torch.float32),
        results=results,
    )
