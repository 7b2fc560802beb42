"""The swarm's two vote units as policies of the one ``Swarm`` protocol (``moe_swarm.swarm.protocol``).

- ``AnswerVote``: agents write whole answers, a (score-weighted) vote over canonical answers picks one,
  optional refinement rounds (the ``SwarmSolver`` engine, ``SwarmConfig``);
- ``StepVote``: agents propose each reasoning step of one shared trajectory, a vote per step commits one
  (the ``StepSwarm`` engine, ``StepSwarmConfig``).

``make_swarm`` builds either from its config and a scorer (value head or step checker), using the
scorer only where the config's score or vote reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from moe_swarm.model import MoETransformer
from moe_swarm.swarm.checker import StepChecker
from moe_swarm.swarm.config import SwarmConfig
from moe_swarm.swarm.protocol import Compute, Swarm, SwarmOutcome
from moe_swarm.swarm.selector import StepSelector
from moe_swarm.swarm.solver import SwarmResult, SwarmSolver, default_canonical
from moe_swarm.swarm.steps import StepSwarm, StepSwarmConfig, StepSwarmResult
from moe_swarm.swarm.value import ValueHead

Canonical = Callable[[str], str]  # a decoded answer -> the form votes are counted in


def answer_outcome(result: SwarmResult) -> SwarmOutcome:
    """A ``SwarmResult`` (answer-level engine) as a protocol outcome; the trace is its records."""
    return SwarmOutcome(
        answer=result.answer,
        text=result.text,
        votes=dict(result.votes),
        compute=Compute(result.forward_passes, result.flops, result.tokens_processed),
        trace=list(result.records),
        weights=[r.score for r in result.records],
        raw=result,
    )


def step_outcome(result: StepSwarmResult) -> SwarmOutcome:
    """A ``StepSwarmResult`` as a protocol outcome; the text is the committed scratchpad, the trace
    every step proposal and the votes the answer line's tally."""
    return SwarmOutcome(
        answer=result.answer,
        text=result.completion,
        votes=dict(result.answer_votes),
        compute=Compute(
            result.forward_passes, result.flops, result.tokens_processed, result.checker_evaluations
        ),
        trace=list(result.proposals),
        raw=result,
    )


class AnswerVote:
    """The answer-level policy: the vote's unit is a whole answer."""

    vote_unit = "answer"

    def __init__(
        self,
        model: MoETransformer,
        tokenizer,
        cfg: SwarmConfig,
        canonical: Canonical = default_canonical,
        value_head: ValueHead | None = None,
    ) -> None:
        self.model, self.tok, self.cfg, self.canonical, self.value_head = (
            model,
            tokenizer,
            cfg,
            canonical,
            value_head,
        )

    def solve(self, prompts: Sequence[str], seed: int | None = None) -> list[SwarmOutcome]:
        cfg = self.cfg if seed is None else self.cfg.replace(seed=seed)
        solver = SwarmSolver(self.model, cfg, self.tok, canonical=self.canonical, value_head=self.value_head)
        return [answer_outcome(r) for r in solver.solve(prompts)]


class StepVote:
    """The step-level policy: the vote's unit is one reasoning step of a shared trajectory."""

    vote_unit = "step"

    def __init__(
        self,
        model: MoETransformer,
        tokenizer,
        task,
        cfg: StepSwarmConfig,
        checker: StepChecker | None = None,
        selector: StepSelector | None = None,
    ) -> None:
        self.model, self.tok, self.task, self.cfg, self.checker = model, tokenizer, task, cfg, checker
        self.selector = selector

    def solve(self, prompts: Sequence[str], seed: int | None = None) -> list[SwarmOutcome]:
        cfg = self.cfg if seed is None else self.cfg.replace(seed=seed)
        swarm = StepSwarm(self.model, cfg, self.tok, self.task, self.checker, selector=self.selector)
        return [step_outcome(r) for r in swarm.solve(prompts)]


def make_swarm(
    model: MoETransformer,
    tokenizer,
    task,
    cfg: SwarmConfig | StepSwarmConfig,
    scorer: ValueHead | StepChecker | None = None,
) -> Swarm:
    """The policy ``cfg`` describes; ``scorer`` is passed on only where the config reads it (a value
    head for ``score`` value/both, a step checker for a checker vote)."""
    if isinstance(cfg, StepSwarmConfig):
        checker = scorer if cfg.vote.startswith("checker") else None
        return StepVote(model, tokenizer, task, cfg, checker)
    head = scorer if cfg.score in ("value", "both") else None
    return AnswerVote(model, tokenizer, cfg, task.canonical, head)
