"""Swarm test-time reasoning on top of ``moe_swarm.model`` (plain PyTorch: no Lightning, Hydra or gRPC).

The step-level swarm (``StepSwarm``) has N agents propose each step of one shared, KV-cached
trajectory, votes on canonical steps (plurality, likelihood or a learned ``StepChecker``), commits the
winner and backtracks on split votes or failed checks. The answer-level solver (``SwarmSolver``) is
kept as a baseline: agents (rows of one batched decode with their own temperature, router noise,
top-k and seed) propose answers, records go to a shared ThoughtBuffer, a score (log-likelihood and/or value head) weights a
vote, agents are resampled by score, and problems stop when the vote share passes a threshold.
Both are policies of one ``Swarm`` protocol (``protocol``, ``policies``), as are the controls
(``controls``); one harness (``evaluation``, ``eval_grids``) evaluates a list of them. See docs/swarm.md.
"""

from moe_swarm.swarm.agents import AgentBatch, AgentSpec, make_agents, mix_seed, resample_agents
from moe_swarm.swarm.baselines import (
    diversity_controls,
    greedy,
    greedy_config,
    independent_config,
    independent_vote_at_budget,
    summarise_results,
)
from moe_swarm.swarm.buffer import ThoughtBuffer, ThoughtRecord
from moe_swarm.swarm.checker import StepChecker, checker_loss, encode_steps
from moe_swarm.swarm.compute import ModelCost
from moe_swarm.swarm.config import SwarmConfig
from moe_swarm.swarm.controls import CheckerVote, IndependentVote, greedy_solver
from moe_swarm.swarm.outcomes import ANSWER_OUTCOMES, answer_outcomes, outcome_table
from moe_swarm.swarm.policies import AnswerVote, StepVote, make_swarm
from moe_swarm.swarm.protocol import BudgetedSwarm, Compute, Swarm, SwarmOutcome, VoteUnit
from moe_swarm.swarm.rollouts import Rollouts, StepRollouts, collect_rollouts, collect_step_rollouts
from moe_swarm.swarm.solver import (
    Proposals,
    SwarmResult,
    SwarmSolver,
    default_canonical,
    embedding_scale,
    normalise_thoughts,
    score_weights,
)
from moe_swarm.swarm.state import (
    SWARM_STATE_KEY,
    load_step_checker,
    load_swarm_state,
    save_swarm_state,
    step_swarm_state,
    swarm_state_dict,
)
from moe_swarm.swarm.statistics import (
    holm_adjust,
    mean_of_defined,
    paired_bootstrap_ci,
    ranking_auc,
    ranking_quality,
    two_level_bootstrap_ci,
    within_group_auc,
)
from moe_swarm.swarm.steps import StepProposal, StepSwarm, StepSwarmConfig, StepSwarmResult
from moe_swarm.swarm.trunk_checker import TrunkStepChecker
from moe_swarm.swarm.value import ValueHead, fit_value_head, group_relative_advantages, value_loss
from moe_swarm.swarm.voting import VoteResult, vote

__all__ = [
    "ANSWER_OUTCOMES",
    "SWARM_STATE_KEY",
    "AgentBatch",
    "AgentSpec",
    "ModelCost",
    "Proposals",
    "Rollouts",
    "SwarmConfig",
    "SwarmResult",
    "SwarmSolver",
    "ThoughtBuffer",
    "ThoughtRecord",
    "ValueHead",
    "VoteResult",
    "collect_rollouts",
    "default_canonical",
    "diversity_controls",
    "embedding_scale",
    "fit_value_head",
    "greedy",
    "greedy_config",
    "group_relative_advantages",
    "independent_config",
    "independent_vote_at_budget",
    "load_swarm_state",
    "make_agents",
    "mix_seed",
    "normalise_thoughts",
    "resample_agents",
    "save_swarm_state",
    "swarm_state_dict",
    "value_loss",
    "vote",
    "answer_outcomes",
    "outcome_table",
    "score_weights",
    "holm_adjust",
    "mean_of_defined",
    "paired_bootstrap_ci",
    "ranking_auc",
    "two_level_bootstrap_ci",
    "summarise_results",
    "StepChecker",
    "TrunkStepChecker",
    "checker_loss",
    "encode_steps",
    "ranking_quality",
    "within_group_auc",
    "load_step_checker",
    "step_swarm_state",
    "StepProposal",
    "StepRollouts",
    "StepSwarm",
    "StepSwarmConfig",
    "StepSwarmResult",
    "collect_step_rollouts",
    "AnswerVote",
    "BudgetedSwarm",
    "CheckerVote",
    "Compute",
    "IndependentVote",
    "StepVote",
    "Swarm",
    "SwarmOutcome",
    "VoteUnit",
    "greedy_solver",
    "make_swarm",
]
