"""Rollouts: run a swarm on training problems and label what it proposed.

Answer level (``collect_rollouts``): every record labelled by exact match; what a value-head trainer
consumes (thought vectors, rewards and the problem each record belongs to, for group-relative
advantages). Step level (``collect_step_rollouts``): every step proposal labelled by the task's step
oracle; what the step checker trains on, and (``validation_selector``) what the step selector is
fitted on, from validation problems only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from moe_swarm.swarm.selector import (
    SELECTOR_FEATURES,
    StepSelector,
    fit_selector,
    selection_accuracy,
    selector_groups,
)
from moe_swarm.swarm.solver import SwarmResult, SwarmSolver
from moe_swarm.swarm.steps import StepSwarm, StepSwarmResult
from moe_swarm.swarm.value import group_relative_advantages
from moe_swarm.swarm.voting import vote


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


@dataclass
class StepRollouts:
    """Every proposal of step-swarm runs, labelled by the task's step oracle (``Task.step_is_correct``).

    Row i: ``contexts[i] + steps[i]`` (what the checker reads), ``labels[i]`` (1 = the correct next step after its prefix),
    ``groups[i]`` (proposals made at one position from one prefix in one attempt: the set a vote picks
    from), ``vote_wrong[i]`` (its group's plurality winner is wrong although a right proposal is in the
    group: where a better scorer could change the outcome), ``logprobs[i]`` (the likelihood baseline),
    ``prefix_ok[i]`` (its prefix is right so far: after a wrong step every proposal is labelled wrong, which
    says nothing about the proposal itself), ``hard_negative[i]`` (a wrong proposal, after a right prefix,
    of the step its group's plurality picked although a right one was there: the mistakes a vote commits),
    ``checker[i]`` (the checker's P(correct) when the swarm that proposed it had one, else NaN).
    """

    labels: Tensor
    groups: Tensor
    vote_wrong: Tensor
    logprobs: Tensor
    prefix_ok: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))  # prefix is right
    hard_negative: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    checker: Tensor = field(default_factory=lambda: torch.zeros(0))
    contexts: list[str] = field(default_factory=list, repr=False)  # prompt + committed prefix, per row
    steps: list[str] = field(default_factory=list, repr=False)  # the proposed step text, per row
    answer_lines: list[bool] = field(default_factory=list, repr=False)  # the step ended with EOS

    def __post_init__(self) -> None:
        n = int(self.labels.shape[0])  # rows built without the optional columns get their neutral values
        if self.hard_negative.numel() == 0 and n:
            self.hard_negative = torch.zeros(n, dtype=torch.bool)
        if self.checker.numel() == 0 and n:
            self.checker = torch.full((n,), math.nan)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def extended(self, more: StepRollouts) -> StepRollouts:
        """These rows, then ``more``'s, its groups renumbered after this one's (the pool of several
        collection rounds)."""
        shift = int(self.groups.max()) + 1 if len(self) else 0
        return StepRollouts(
            labels=torch.cat([self.labels, more.labels]),
            groups=torch.cat([self.groups, more.groups + shift]),
            vote_wrong=torch.cat([self.vote_wrong, more.vote_wrong]),
            logprobs=torch.cat([self.logprobs, more.logprobs]),
            prefix_ok=torch.cat([self.prefix_ok, more.prefix_ok]),
            hard_negative=torch.cat([self.hard_negative, more.hard_negative]),
            checker=torch.cat([self.checker, more.checker]),
            contexts=self.contexts + more.contexts,
            steps=self.steps + more.steps,
            answer_lines=self.answer_lines + more.answer_lines,
        )


def collect_step_rollouts(swarm: StepSwarm, problems: Sequence, task, group_offset: int = 0) -> StepRollouts:
    """Run ``swarm`` on ``problems`` (their ``prompt``) and label each proposal with the step oracle."""
    if not problems:
        raise ValueError("collect_step_rollouts needs at least one problem")
    return label_step_rollouts(problems, swarm.solve([p.prompt for p in problems]), task, group_offset)


def label_step_rollouts(
    problems: Sequence, results: Sequence[StepSwarmResult], task, group_offset: int = 0
) -> StepRollouts:
    """Every proposal of ``results`` (one per problem, in order) labelled with the step oracle; rows in
    proposal order, groups numbered from ``group_offset`` in order of first appearance."""
    labels, groups, logprobs, keys, prefix_ok = [], [], [], {}, []
    contexts, steps, answer_lines = [], [], []
    group_rows: dict[int, list[int]] = {}
    for n, (problem, res) in enumerate(zip(problems, results)):
        for prop, prefix in zip(res.proposals, res.prefixes):
            key = (n, prop.position, prop.attempt, tuple(prefix))
            g = keys.setdefault(key, group_offset + len(keys))
            group_rows.setdefault(g, []).append(len(labels))
            labels.append(float(task.step_is_correct(problem, prefix, prop.step)))
            groups.append(g)
            logprobs.append(prop.logprob)
            prefix_ok.append(task.next_step(problem, prefix) is not None)
            contexts.append(problem.prompt + "".join(x + "\n" for x in prefix))
            steps.append(prop.text)
            answer_lines.append(prop.ended_answer)
    vote_wrong = [False] * len(labels)
    hard_negative = [False] * len(labels)
    all_props = [p for res in results for p in res.proposals]
    for rows in group_rows.values():
        winner = vote([all_props[r].step for r in rows]).answer
        right = {all_props[r].step for r in rows if labels[r] > 0.5}
        if right and winner not in right:
            for r in rows:
                vote_wrong[r] = True
                hard_negative[r] = all_props[r].step == winner
    return StepRollouts(
        labels=torch.tensor(labels),
        groups=torch.tensor(groups, dtype=torch.long),
        vote_wrong=torch.tensor(vote_wrong),
        logprobs=torch.tensor(logprobs),
        prefix_ok=torch.tensor(prefix_ok, dtype=torch.bool),
        hard_negative=torch.tensor(hard_negative, dtype=torch.bool),
        checker=torch.tensor([p.checker for p in all_props], dtype=torch.float32),
        contexts=contexts,
        steps=steps,
        answer_lines=answer_lines,
    )


def validation_selector(
    swarm: StepSwarm, task, n_val: int, seed: int, exclude: Sequence = ()
) -> tuple[StepSelector | None, dict]:
    """A ``StepSelector`` (None when no group holds a right and a wrong candidate) fitted on ``swarm``'s own proposals for ``n_val`` *validation* problems
    (``task.generate("val", ...)``, minus the problems in ``exclude``: the items being evaluated), labelled
    by the step oracle. Returns it with what it was fitted on and its in-sample selection accuracy
    next to the plurality's, over the groups that hold a right and a wrong candidate."""
    skip = {p.prompt for p in exclude if task.split_of(p) == "val"}  # only val items can collide
    pool = task.generate("val", n_val + len(skip), seed=seed)
    problems = [p for p in pool if p.prompt not in skip][:n_val]
    results = swarm.solve([p.prompt for p in problems])
    ro = label_step_rollouts(problems, results, task)
    groups = selector_groups(results, ro.labels.tolist(), ro.groups.tolist())
    choice = sum(1 for _, y in groups if 0 < float(y.sum()) < len(y))
    if not choice:  # no vote where a choice could matter: nothing to fit (reported, not an error)
        return None, {
            "split": "val",
            "problems": len(problems),
            "seed": seed,
            "groups": len(groups),
            "choice_groups": 0,
        }
    selector = fit_selector(groups)
    info = {
        "split": "val",
        "problems": len(problems),
        "seed": seed,
        "groups": len(groups),
        "choice_groups": choice,
        "accuracy_selector_in_sample": selection_accuracy(selector, groups),
        "accuracy_plurality": selection_accuracy(None, groups),
        "weights": dict(zip(SELECTOR_FEATURES, selector.linear.weight[0].tolist())),
    }
    return selector, info
