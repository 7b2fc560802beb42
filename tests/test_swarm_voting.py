"""Plurality and weighted votes on constructed cases, and the solver's vote rules."""

import math

import pytest
import torch

from moe_swarm.data import ByteTokenizer
from moe_swarm.model import MoEConfig, MoETransformer, TransformerConfig
from moe_swarm.swarm import SwarmConfig, SwarmSolver, ThoughtRecord, vote


def test_plurality_counts_and_share():
    v = vote(["12", "7", "12", "3", "12", "7"])
    assert v.answer == "12"
    assert v.share == pytest.approx(3 / 6)
    assert v.votes == {"12": 3.0, "7": 2.0, "3": 1.0}


def test_weighted_vote_can_overturn_plurality():
    answers = ["a", "b", "b", "b"]
    assert vote(answers).answer == "b"
    v = vote(answers, [0.9, 0.1, 0.2, 0.1])
    assert v.answer == "a"
    assert v.share == pytest.approx(0.9 / 1.3)
    assert v.votes["b"] == pytest.approx(0.4)


def test_ties_go_to_the_first_answer_seen():
    assert vote(["b", "a"]).answer == "b"
    assert vote(["a", "b"]).answer == "a"
    assert vote(["x", "y", "y", "x"]).answer == "x"
    v = vote(["p", "q"], [0.5, 0.5])
    assert v.answer == "p" and v.share == 0.5


def test_all_zero_weights_fall_back_to_counts():
    v = vote(["a", "b", "b"], [0.0, 0.0, 0.0])
    assert v.answer == "b" and v.share == pytest.approx(2 / 3)


def test_single_answer_has_full_share():
    assert vote(["only"]).share == 1.0


@pytest.mark.parametrize(
    "answers, weights, match",
    [
        ([], None, "zero answers"),
        (["a"], [1.0, 2.0], "weights"),
        (["a", "b"], [1.0, -1.0], ">= 0"),
        (["a", "b"], [1.0, math.nan], "finite"),
    ],
)
def test_bad_votes_raise(answers, weights, match):
    with pytest.raises(ValueError, match=match):
        vote(answers, weights)


def _solver(**kw) -> SwarmSolver:
    model = MoETransformer(
        TransformerConfig(
            d_model=16, n_layers=1, n_heads=2, max_seq_len=32, moe=MoEConfig(num_experts=4, d_ff=16)
        )
    ).eval()
    return SwarmSolver(model, SwarmConfig(**kw), ByteTokenizer())


def _rec(answer: str, rnd: int, score: float) -> ThoughtRecord:
    return ThoughtRecord(0, 0, rnd, torch.zeros(16), answer, score, 0.0)


def test_solver_vote_rules_all_rounds_vs_last_round_and_weighting():
    records = [_rec("a", 0, 0.2), _rec("a", 0, 0.2), _rec("a", 0, 0.2), _rec("b", 1, 0.9), _rec("a", 1, 0.1)]
    v = _solver(vote_rounds="all", vote="plurality")._vote(records)
    assert (v.answer, v.share) == ("a", pytest.approx(4 / 5))
    v = _solver(vote_rounds="last", vote="plurality")._vote(records)
    assert v.votes == {"b": 1.0, "a": 1.0} and v.answer == "b"  # tie: first seen in the last round
    v = _solver(vote_rounds="all", vote="weighted")._vote(records)
    assert v.answer == "b" and v.share == pytest.approx(0.9 / 1.6)
    v = _solver(vote_rounds="last", vote="weighted")._vote(records)
    assert v.answer == "b" and v.share == pytest.approx(0.9 / 1.0)
