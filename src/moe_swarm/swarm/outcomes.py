"""Per-problem outcomes of an answer-level swarm run, computed from its records (plain PyTorch/Python).

One name per outcome, used in code, JSON, tables, logged metrics and docs (1.0 = exact match):

- ``single_agent``: mean exact match of the records (one agent's expected accuracy);
- ``majority``: plurality vote over every record;
- ``score_weighted``: vote weighted by the records' own scores (the run's ``score`` mode);
- ``rescored``: vote weighted by ``score_mode`` recomputed from the records with the solver's own
  ``score_weights`` (so a control run can be re-voted the way the swarm votes);
- ``value_weighted`` / ``best_of_n_value``: the value head's P(correct) as vote weight / argmax;
- ``best_of_n_logprob``: the record with the highest length-normalised log-likelihood;
- ``pass_at_n``: some record of the *first* round is right (true pass@N, N = the round's agents);
- ``coverage``: some record of *any* round is right (oracle coverage over all records);
- ``swarm``: the solver's own answer.

Plus ``value_auc_within`` / ``logprob_auc_within`` (``ranking_auc`` of a scorer among one problem's
records; NaN unless it has right and wrong ones) and the compute ``forward_passes``, ``flops``,
``rounds_used``. Value-head outcomes are NaN without a head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moe_swarm.swarm.buffer import ThoughtRecord
from moe_swarm.swarm.solver import SwarmResult, score_weights
from moe_swarm.swarm.statistics import ranking_auc
from moe_swarm.swarm.value import ValueHead
from moe_swarm.swarm.voting import vote

ANSWER_OUTCOMES = (
    "single_agent",
    "majority",
    "score_weighted",
    "rescored",
    "value_weighted",
    "best_of_n_value",
    "best_of_n_logprob",
    "pass_at_n",
    "coverage",
    "swarm",
)
ANSWER_EXTRAS = ("value_auc_within", "logprob_auc_within", "forward_passes", "flops", "rounds_used")


def record_value(records: Sequence[ThoughtRecord], value_head: ValueHead | None) -> list[float] | None:
    """The value head's P(correct) of each record's thought, or None without a head."""
    if value_head is None:
        return None
    thoughts = torch.stack([r.thought for r in records]).float()
    return score_weights("value", torch.zeros(len(records)), thoughts, value_head).tolist()


def answer_outcomes(
    result: SwarmResult,
    answer: str,
    task,
    value: Sequence[float] | None = None,
    score_mode: str = "logprob",
    value_head: ValueHead | None = None,
) -> dict[str, float]:
    """Every outcome (see the module docstring) of one problem whose right answer is ``answer``.

    ``value``: the head's P(correct) per record if already computed (else from ``value_head``).
    """
    recs = result.records
    if not recs:
        raise ValueError("a swarm result without records has no outcomes")
    if value is None and value_head is not None:
        value = record_value(recs, value_head)
    right = [bool(task.score(r.text, answer)) for r in recs]
    answers = [r.answer for r in recs]
    first_round = min(r.round for r in recs)

    def em(text: str) -> float:
        return float(task.score(text, answer))

    thoughts = torch.stack([r.thought for r in recs]).float()
    logprob = torch.tensor([r.logprob for r in recs])
    if score_mode in ("value", "both") and value_head is None:
        raise ValueError(f"score mode {score_mode!r} needs a value head")
    weights = score_weights(score_mode, logprob, thoughts, value_head).tolist()
    nan = float("nan")
    return {
        "single_agent": sum(right) / len(right),
        "majority": em(vote(answers).answer),
        "score_weighted": em(vote(answers, [r.score for r in recs]).answer),
        "rescored": em(vote(answers, weights).answer),
        "value_weighted": em(vote(answers, value).answer) if value is not None else nan,
        "best_of_n_value": float(right[max(range(len(recs)), key=value.__getitem__)]) if value else nan,
        "best_of_n_logprob": float(right[max(range(len(recs)), key=lambda i: recs[i].logprob)]),
        "pass_at_n": float(any(ok for ok, r in zip(right, recs) if r.round == first_round)),
        "coverage": float(any(right)),
        "swarm": em(result.answer),
        "value_auc_within": ranking_auc(value, right) if value is not None else nan,
        "logprob_auc_within": ranking_auc([r.logprob for r in recs], right),
        "forward_passes": float(result.forward_passes),
        "flops": float(result.flops),
        "rounds_used": float(result.rounds_used),
    }


def outcome_table(
    results: Sequence[SwarmResult],
    answers: Sequence[str],
    task,
    value_head: ValueHead | None = None,
    score_mode: str = "logprob",
) -> dict[str, list[float]]:
    """``answer_outcomes`` of every problem, as one list per outcome name (problem order kept)."""
    table: dict[str, list[float]] = {k: [] for k in (*ANSWER_OUTCOMES, *ANSWER_EXTRAS)}
    for result, answer in zip(results, answers, strict=True):
        for name, x in answer_outcomes(result, answer, task, None, score_mode, value_head).items():
            table[name].append(x)
    return table
