"""The swarm's honest controls as solvers of the ``Swarm`` protocol (built on ``moe_swarm.swarm.baselines``).

- ``greedy_solver``: one greedy agent, unperturbed router, one round;
- ``IndependentVote``: independent agents from a swarm's agent distribution (an ``AnswerVote``'s
  config), drawn until each problem has used its budget (normally the swarm's forward passes on it),
  plain majority vote;
- ``CheckerVote``: the same samples, each also read once by a step checker (one forward pass each,
  charged; a checker that shares the trunk reads the samples' own hidden states and costs its head
  only), the vote weighted by the product of its steps' checker probabilities.

The budgeted controls satisfy ``BudgetedSwarm``: ``at_budget(budgets)`` gives the ``Swarm`` to run. A
budget counts ``unit``: forward passes (the default) or FLOPs (``unit="flops"``: as many samples as fit
in the swarm's FLOPs, so a swarm whose checker is a full model copy is not favoured by the matching).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from moe_swarm.model import MoETransformer
from moe_swarm.swarm.baselines import BUDGET_UNITS, greedy_config, independent_vote_at_budget
from moe_swarm.swarm.checker import StepChecker, score_completions
from moe_swarm.swarm.compute import ModelCost
from moe_swarm.swarm.config import SwarmConfig
from moe_swarm.swarm.policies import AnswerVote, Canonical, answer_outcome
from moe_swarm.swarm.protocol import Compute, Swarm, SwarmOutcome
from moe_swarm.swarm.steps import StepSwarmConfig
from moe_swarm.swarm.trunk_checker import TrunkStepChecker, score_completions_trunk
from moe_swarm.swarm.voting import vote


def greedy_solver(
    model: MoETransformer, tokenizer, max_new_tokens: int, canonical: Canonical, **cfg: Any
) -> AnswerVote:
    """Plain greedy decoding as a (one-agent) swarm; ``cfg``: other ``SwarmConfig`` fields."""
    return AnswerVote(model, tokenizer, greedy_config(max_new_tokens).replace(**cfg), canonical)


def step_agents_config(cfg: StepSwarmConfig, max_new_tokens: int) -> SwarmConfig:
    """The independent agents matching a step swarm: its temperatures and seed, whole scratchpads of up to
    ``max_new_tokens`` tokens, likelihood scores, waves bounded by its ``max_batch_rows``."""
    return SwarmConfig(
        num_agents=cfg.num_agents,
        rounds=0,
        diversity="temperature",
        temperature=list(cfg.temperature),
        score="logprob",
        max_new_tokens=max_new_tokens,
        max_batch_rows=cfg.max_batch_rows,  # bounds the KV-cache memory of a wave
        seed=cfg.seed,
    )


class _AtBudget:
    """A budgeted control bound to its budgets: a plain ``Swarm``."""

    vote_unit = "answer"

    def __init__(self, draw: Callable, budgets: Sequence[float]) -> None:
        self.draw, self.budgets = draw, [float(b) for b in budgets]

    def solve(self, prompts: Sequence[str], seed: int | None = None) -> list[SwarmOutcome]:
        if len(self.budgets) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(self.budgets)} budgets")
        return self.draw(list(prompts), self.budgets, seed)


class IndependentVote:
    """Independent samples of ``agents``' agent distribution + plain majority vote at a budget per problem
    (``baselines.independent_vote_at_budget``: no refinement, no injection, no early exit).

    The draw is deterministic given (prompts, budgets, seed); the last one is kept so that a
    ``CheckerVote`` over the same samples does not draw them again."""

    vote_unit = "answer"

    def __init__(self, agents: AnswerVote, unit: str = "forward_passes") -> None:
        if unit not in BUDGET_UNITS:
            raise ValueError(f"budget unit must be one of {BUDGET_UNITS}, got {unit!r}")
        self.agents, self.unit = agents, unit
        self._last: tuple[tuple, list[SwarmOutcome]] | None = None

    def at_budget(self, budgets: Sequence[float]) -> Swarm:
        return _AtBudget(self.draw, budgets)

    def draw(self, prompts: list[str], budgets: list[float], seed: int | None) -> list[SwarmOutcome]:
        """Agents until each problem used its budget (fractional forward-pass budgets round down, at least 1)."""
        whole = [max(1, int(b)) for b in budgets] if self.unit == "forward_passes" else list(budgets)
        key = (tuple(prompts), tuple(whole), seed)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        a = self.agents
        cfg = a.cfg if seed is None else a.cfg.replace(seed=seed)
        results = independent_vote_at_budget(
            a.model, a.tok, prompts, whole, cfg, canonical=a.canonical, unit=self.unit
        )
        outcomes = [answer_outcome(r) for r in results]
        self._last = (key, outcomes)
        return outcomes


class CheckerVote:
    """The samples of ``samples`` at the same budgets, re-voted with a step checker's weights.

    Reading a sample costs the checker's forward over it, so per problem the first m samples are kept
    whose generation + checking cost (in the samples' budget unit) is nearest the budget."""

    vote_unit = "answer"

    def __init__(self, samples: IndependentVote, checker: StepChecker | TrunkStepChecker) -> None:
        self.samples, self.checker = samples, checker
        self.cost = ModelCost.from_model(samples.agents.model)
        self.trunk = bool(getattr(checker, "shares_trunk", False))
        if self.trunk:  # the samples' own hidden states: the head is all a check costs
            checker.bind(samples.agents.model)
        self.check_cost = ModelCost.from_model(checker.model)

    def at_budget(self, budgets: Sequence[float]) -> Swarm:
        return _AtBudget(self.draw, budgets)

    def draw(self, prompts: list[str], budgets: list[float], seed: int | None) -> list[SwarmOutcome]:
        drawn = self.samples.draw(prompts, budgets, seed)
        return [self._revote(prompt, o.trace, budget) for prompt, o, budget in zip(prompts, drawn, budgets)]

    def _revote(self, prompt: str, records: list, budget: float) -> SwarmOutcome:
        tok = self.samples.agents.tok
        n_tok = torch.tensor([x.num_tokens for x in records])
        p_len = torch.full_like(n_tok, len(tok.encode(prompt, bos=True)))
        gen = self.cost.row_flops(p_len, n_tok)
        if self.trunk:  # one head evaluation per step line, no forward pass
            steps = torch.tensor([x.text.strip("\n").count("\n") + 1 for x in records], dtype=torch.float64)
            check = steps * self.checker.head_flops()
            fp = n_tok.to(torch.float64)
        else:
            check = self.check_cost.row_flops(p_len, n_tok + 1)  # the checker's teacher-forced read
            fp = (n_tok + 1).to(torch.float64)
        cum = (fp if self.samples.unit == "forward_passes" else gen + check).cumsum(0)
        m = int((cum - budget).abs().argmin()) + 1
        kept = records[:m]
        score = score_completions_trunk if self.trunk else score_completions
        probs = score(self.checker, tok, prompt, [x.text for x in kept])
        weight = [math.prod(p) if p else 0.0 for p in probs]
        v = vote([x.answer for x in kept], weight)
        best = max((i for i in range(m) if kept[i].answer == v.answer), key=weight.__getitem__)
        return SwarmOutcome(
            answer=v.answer,
            text=kept[best].text,
            votes=v.votes,
            compute=Compute(float(fp[:m].sum()), float((gen[:m] + check[:m]).sum()), checker_evaluations=m),
            trace=kept,
            weights=weight,
        )
