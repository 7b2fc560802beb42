"""Compute matching of the swarm's controls: on forward passes and on FLOPs (``unit="flops"``)."""

import pytest
import torch

from moe_swarm.data import ByteTokenizer, get_task
from moe_swarm.model import MoEConfig, MoETransformer, TransformerConfig
from moe_swarm.swarm.baselines import independent_vote_at_budget
from moe_swarm.swarm.checker import StepChecker
from moe_swarm.swarm.compute import ModelCost
from moe_swarm.swarm.config import SwarmConfig
from moe_swarm.swarm.controls import CheckerVote, IndependentVote
from moe_swarm.swarm.policies import AnswerVote

TOK = ByteTokenizer()
TASK = get_task("mul", digits_a=2, digits_b=1, scratchpad=True)
PROMPTS = [p.prompt for p in TASK.generate("train", 3, seed=0)]


def tiny(seed: int = 0) -> MoETransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        d_model=32, n_layers=1, n_heads=2, max_seq_len=48, moe=MoEConfig(num_experts=4, d_ff=32)
    )
    return MoETransformer(cfg).eval()


CFG = SwarmConfig(num_agents=4, rounds=0, temperature=[1.0], score="logprob", max_new_tokens=12, seed=3)


def test_flop_budget_keeps_the_prefix_of_agents_whose_flops_are_nearest_the_budget():
    model = tiny()
    cost = ModelCost.from_model(model)
    long = independent_vote_at_budget(model, TOK, PROMPTS, [400] * 3, CFG, canonical=TASK.canonical)
    budgets = [3.3 * r.flops / len(r.records) for r in long]  # about three agents' FLOPs
    short = independent_vote_at_budget(
        model, TOK, PROMPTS, budgets, CFG, canonical=TASK.canonical, unit="flops"
    )
    for prompt, s, lng, budget in zip(PROMPTS, short, long, budgets):
        m = len(s.records)
        assert [r.text for r in s.records] == [r.text for r in lng.records[:m]]  # the same agents, in order
        p_len = torch.full((len(lng.records),), len(TOK.encode(prompt, bos=True)))
        cum = cost.row_flops(p_len, torch.tensor([r.num_tokens for r in lng.records])).cumsum(0)
        assert s.flops == pytest.approx(float(cum[m - 1]), rel=1e-9)
        assert m - 1 == int((cum - budget).abs().argmin())  # no other prefix is nearer the budget
        assert s.forward_passes == sum(r.num_tokens for r in s.records)


def test_a_bigger_flop_budget_buys_more_agents_and_units_are_checked():
    model = tiny()
    base = independent_vote_at_budget(model, TOK, PROMPTS, [30] * 3, CFG, canonical=TASK.canonical)
    more = independent_vote_at_budget(
        model, TOK, PROMPTS, [1.6 * r.flops for r in base], CFG, canonical=TASK.canonical, unit="flops"
    )
    assert sum(len(r.records) for r in more) > sum(len(r.records) for r in base)
    with pytest.raises(ValueError, match="budget unit"):
        independent_vote_at_budget(model, TOK, PROMPTS, [30] * 3, CFG, unit="tokens")
    with pytest.raises(ValueError, match="budgets must be"):
        independent_vote_at_budget(model, TOK, PROMPTS, [0.0] * 3, CFG, unit="flops")


def test_checker_vote_at_flops_charges_generation_and_the_checkers_read():
    model = tiny()
    checker = StepChecker(tiny(1)).eval()
    agents = AnswerVote(model, TOK, CFG, TASK.canonical)
    by_fp = CheckerVote(IndependentVote(agents), checker).at_budget([40] * 3).solve(PROMPTS)
    by_flops = CheckerVote(IndependentVote(agents, unit="flops"), checker)
    budgets = [o.compute.flops for o in by_fp]  # the FLOPs the forward-pass matching spent
    out = by_flops.at_budget(budgets).solve(PROMPTS)
    for o, b, ref in zip(out, budgets, by_fp):
        assert o.compute.checker_evaluations == len(o.trace) == len(o.weights)
        # the same samples fit both ways (same agents, and the budget is their FLOPs): equal cost
        assert o.compute.flops == pytest.approx(b, rel=1e-9) and len(o.trace) == len(ref.trace)
