"""The learned step selector: candidate features, listwise fitting, and the step swarm's selector vote."""

import math
from dataclasses import dataclass

import pytest
import torch

from moe_swarm.data import ByteTokenizer, get_task
from moe_swarm.model import MoEConfig, MoETransformer, TransformerConfig
from moe_swarm.swarm import StepSwarm, StepSwarmConfig
from moe_swarm.swarm.rollouts import validation_selector
from moe_swarm.swarm.selector import (
    SELECTOR_FEATURES,
    StepSelector,
    candidate_features,
    fit_selector,
    selection_accuracy,
)
from moe_swarm.swarm.trunk_checker import TrunkStepChecker


@dataclass
class P:  # what the selector reads of a StepProposal
    step: str
    checker: float
    logprob: float
    num_tokens: int


def test_candidate_features_aggregate_each_distinct_step():
    props = [
        P("1+1=2", 0.9, -0.1, 6),
        P("1+1=3", 0.2, -0.5, 6),
        P("1+1=2", 0.7, -0.3, 6),
        P("x", math.nan, -2.0, 2),
    ]
    steps, f = candidate_features(props)
    assert steps == ["1+1=2", "1+1=3", "x"] and f.shape == (3, len(SELECTOR_FEATURES))
    col = {k: i for i, k in enumerate(SELECTOR_FEATURES)}
    assert torch.allclose(f[0, col["checker_mean"]], torch.tensor(0.8), atol=1e-6)
    assert torch.allclose(f[0, col["checker_max"]], torch.tensor(0.9), atol=1e-6)
    assert torch.allclose(f[0, col["logprob_mean"]], torch.tensor(-0.2), atol=1e-6)
    assert torch.allclose(f[:, col["vote_share"]], torch.tensor([0.5, 0.25, 0.25]), atol=1e-6)
    assert f[2, col["checker_mean"]] == pytest.approx(0.5)  # no checker score: neutral
    assert f[1, col["agreement"]] > f[2, col["agreement"]]  # "1+1=3" is near "1+1=2"; "x" is near nothing
    assert f[2, col["length"]] == pytest.approx(2 / 5)


def synthetic_groups(n: int, seed: int):
    """Groups where the plurality is often wrong but the right candidate has the highest checker score."""
    g = torch.Generator().manual_seed(seed)
    groups = []
    for _ in range(n):
        c = 3
        f = torch.rand(c, len(SELECTOR_FEATURES), generator=g)
        right = int(torch.randint(c, (1,), generator=g))
        f[right, 0] = f[:, 0].max() + 0.2  # checker_mean decides
        y = torch.zeros(c)
        y[right] = 1.0
        groups.append((f, y))
    return groups


def test_fit_selector_learns_the_signal_that_decides_and_beats_the_plurality():
    train, held = synthetic_groups(80, 0), synthetic_groups(80, 1)
    sel = fit_selector(train, steps=200)
    assert selection_accuracy(sel, held) > 0.9 > selection_accuracy(None, held)
    assert sel.linear.weight[0, 0] == sel.linear.weight[0].max()  # the checker mean carries the weight
    loaded = StepSelector.from_state(sel.state())
    f = held[0][0]
    assert torch.allclose(loaded(f), sel(f), atol=1e-6)
    with pytest.raises(ValueError, match="nothing to learn"):
        fit_selector([(torch.rand(2, 6), torch.ones(2))])


def tiny(seed: int = 0) -> MoETransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        d_model=32, n_layers=1, n_heads=2, max_seq_len=64, moe=MoEConfig(num_experts=4, d_ff=32)
    )
    return MoETransformer(cfg).eval()


def test_selector_vote_commits_the_selectors_choice_and_is_fitted_on_val_items_only():
    tok, task = ByteTokenizer(), get_task("mul", digits_a=2, digits_b=1, scratchpad=True)
    model = tiny()
    torch.manual_seed(1)
    checker = TrunkStepChecker(32, hidden=8).eval()
    cfg = StepSwarmConfig(
        num_agents=4, wave_agents=4, temperature=(1.5,), vote="checker", max_step_tokens=8, max_steps=4
    )
    test = task.generate("test", 3, seed=0)
    excluded = task.generate("val", 2, seed=5)
    sel, info = validation_selector(
        StepSwarm(model, cfg, tok, task, checker), task, 6, seed=5, exclude=excluded
    )
    assert info["split"] == "val" and info["problems"] == 6
    if sel is None:  # a random model is never right: nothing to choose between, reported as such
        assert info["choice_groups"] == 0
    sel = fit_selector(synthetic_groups(40, 2), steps=50)  # any fitted selector drives the vote
    with pytest.raises(ValueError, match="needs a fitted StepSelector"):
        StepSwarm(model, cfg.replace(vote="selector"), tok, task, checker)
    results = StepSwarm(model, cfg.replace(vote="selector"), tok, task, checker, selector=sel).solve(
        [p.prompt for p in test]
    )
    for r in results:  # each committed step is the selector's top candidate among its group's proposals
        for k, (step, share) in enumerate(zip(r.steps, r.shares)):
            group = [p for p in r.proposals if p.position == k]
            top, prob, _ = sel.select(group)
            assert step == top and share == pytest.approx(prob, abs=1e-6)
