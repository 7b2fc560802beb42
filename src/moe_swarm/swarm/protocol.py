"""One ``Swarm`` protocol for every test-time solver: the swarm (either vote unit) and its controls.

A solver takes prompts and a run seed and returns one ``SwarmOutcome`` per prompt: the answer, the
vote that chose it, the trace it was chosen from and what it cost. What is voted on (whole answers or
single reasoning steps) is the solver's policy (``moe_swarm.swarm.policies``); the controls (greedy,
independent samples + majority or checker vote at a compute budget) are solvers of the same protocol
(``moe_swarm.swarm.controls``), so an evaluation takes a plain list of solvers
(``moe_swarm.swarm.evaluation``).

Seeds: each engine derives a problem's seed from the run seed and the prompt's tokens, so a problem
gets the same draws whatever it is batched with; ``seed=None`` keeps the solver's configured seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

VoteUnit = Literal["answer", "step"]


@dataclass(frozen=True)
class Compute:
    """What solving one problem cost (definitions in ``moe_swarm.swarm.compute``): (row, forward)
    evaluations of generator and checker, positions run through a model, FLOPs, checker calls."""

    forward_passes: float
    flops: float
    tokens_processed: int = 0
    checker_evaluations: int = 0


@dataclass
class SwarmOutcome:
    """One problem's result under the protocol.

    ``answer``: the winning canonical answer; ``text``: the raw text it came from (the committed
    scratchpad for the step unit); ``votes``: the tally per canonical answer; ``trace``: what was voted
    over (answer-level ``ThoughtRecord`` s, step-level ``StepProposal`` s, or a control's samples);
    ``weights``: each trace entry's vote weight where the vote weighted them (else empty); ``raw``: the
    engine's own result (``SwarmResult``, ``StepSwarmResult``) for policy-specific outcomes.
    """

    answer: str
    text: str
    votes: dict[str, float]
    compute: Compute
    trace: list = field(default_factory=list, repr=False)
    weights: list[float] = field(default_factory=list, repr=False)
    raw: Any = field(default=None, repr=False)


@runtime_checkable
class Swarm(Protocol):
    """A test-time solver: ``solve(prompts, seed)`` -> one ``SwarmOutcome`` per prompt, in order."""

    vote_unit: VoteUnit

    def solve(self, prompts: Sequence[str], seed: int | None = None) -> list[SwarmOutcome]: ...


@runtime_checkable
class BudgetedSwarm(Protocol):
    """A control that spends a given compute per problem: ``at_budget`` binds the forward passes each
    problem may use (normally another solver's own) and returns a ``Swarm``."""

    vote_unit: VoteUnit

    def at_budget(self, budgets: Sequence[float]) -> Swarm: ...
