"""Agent populations: diversity modes, grids, distributions, resampling in proportion to score."""

import pytest
import torch

from moe_swarm.swarm import AgentBatch, AgentSpec, SwarmConfig, make_agents, resample_agents
from moe_swarm.swarm.agents import SEED_LIMIT, seeded_generator


def test_diversity_modes_switch_off_the_other_perturbations():
    base = dict(temperature=[0.5, 1.5], routing_noise=[0.3, 2.0], top_k_override=[None, 3])
    t = make_agents(SwarmConfig(diversity="temperature", **base), 16, 0, 1)
    assert set(t.temperature.tolist()) == {0.5, 1.5}
    assert (t.routing_noise == 0).all() and (t.top_k == 0).all() and not t.uses_routing
    r = make_agents(SwarmConfig(diversity="routing", **base), 16, 0, 1)
    assert (r.temperature == 0).all()
    assert sorted({round(x, 4) for x in r.routing_noise.tolist()}) == [0.3, 2.0]
    assert set(r.top_k.tolist()) == {0, 3}
    assert r.uses_routing
    n = make_agents(SwarmConfig(diversity="none", **base), 4, 0, 1)
    assert (n.temperature == 0).all() and (n.routing_noise == 0).all() and (n.top_k == 0).all()


def test_grid_walks_the_product_and_continues_across_rounds():
    cfg = SwarmConfig(
        diversity="both", temperature=[0.5, 1.0], routing_noise=[0.0, 1.0], agent_sampling="grid"
    )
    a0 = make_agents(cfg, 2, 0, 7)
    a1 = make_agents(cfg, 2, 1, 7)
    combos = [(s.temperature, s.routing_noise) for s in [*a0, *a1]]
    assert combos == [(0.5, 0.0), (0.5, 1.0), (1.0, 0.0), (1.0, 1.0)]
    four = make_agents(cfg, 4, 0, 7)
    assert sorted((s.temperature, s.routing_noise) for s in four) == sorted(combos)


def test_agents_are_deterministic_and_seeded_per_problem_and_round():
    cfg = SwarmConfig(diversity="both", agent_sampling="choice", temperature=[0.2, 0.8, 1.4])
    a = make_agents(cfg, 32, 0, 11)
    b = make_agents(cfg, 32, 0, 11)
    assert a.specs() == b.specs()
    assert not torch.equal(a.seed, make_agents(cfg, 32, 0, 12).seed)
    assert not torch.equal(a.seed, make_agents(cfg, 32, 1, 11).seed)
    assert ((a.seed >= 0) & (a.seed < SEED_LIMIT)).all()
    assert sorted({round(x, 4) for x in a.temperature.tolist()}) == [0.2, 0.8, 1.4]


def test_uniform_sampling_stays_in_range():
    cfg = SwarmConfig(
        diversity="both", agent_sampling="uniform", temperature=[0.5, 1.0], routing_noise=[0.0, 2.0]
    )
    a = make_agents(cfg, 500, 0, 3)
    assert a.temperature.min() >= 0.5 and a.temperature.max() <= 1.0
    assert a.routing_noise.min() >= 0.0 and a.routing_noise.max() <= 2.0
    assert a.temperature.std() > 0.1  # actually spread out, not a constant


def test_resampling_is_proportional_to_score():
    specs = [AgentSpec(float(i), 0.1 * i, None if i == 0 else i, 100 + i) for i in range(4)]
    agents = AgentBatch.from_specs(specs)
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    n = 40_000
    parents, children = resample_agents(agents, weights, n, seeded_generator(5))
    freq = torch.bincount(parents, minlength=4).double() / n
    expected = weights.double() / weights.sum()
    # Binomial std is <= 0.0025 at n=40k; 0.01 is four standard deviations.
    assert torch.allclose(freq, expected, atol=0.01), freq
    # Children inherit their parent's settings and get fresh seeds.
    assert torch.equal(children.temperature, agents.temperature[parents])
    assert torch.equal(children.routing_noise, agents.routing_noise[parents])
    assert torch.equal(children.top_k, agents.top_k[parents])
    assert not torch.equal(children.seed, agents.seed[parents])
    again, _ = resample_agents(agents, weights, n, seeded_generator(5))
    assert torch.equal(parents, again), "same generator seed, same draw"


def test_zero_score_agents_are_never_chosen_and_all_zero_means_uniform():
    agents = AgentBatch.from_specs([AgentSpec(1.0, 0.0, None, i) for i in range(3)])
    parents, _ = resample_agents(agents, torch.tensor([0.0, 1.0, 0.0]), 200, seeded_generator(1))
    assert (parents == 1).all()
    parents, _ = resample_agents(agents, torch.zeros(3), 3000, seeded_generator(1))
    assert set(parents.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="finite and >= 0"):
        resample_agents(agents, torch.tensor([1.0, -1.0, 0.0]), 2, seeded_generator(1))
    with pytest.raises(ValueError, match="one weight per agent"):
        resample_agents(agents, torch.ones(2), 2, seeded_generator(1))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"diversity": "chaos"}, "diversity"),
        ({"num_agents": 0}, "num_agents"),
        ({"rounds": -1}, "rounds"),
        ({"temperature": [-0.5]}, "temperatures"),
        ({"routing_noise": []}, "at least one value"),
        ({"top_k_override": [0]}, "top_k_override"),
        ({"agent_sampling": "uniform", "temperature": [1.0]}, r"\[low, high\]"),
        ({"vote": "ranked"}, "vote"),
        ({"max_batch_rows": 0}, "max_batch_rows"),
    ],
)
def test_config_rejects_bad_values_with_a_clear_message(kw, match):
    with pytest.raises(ValueError, match=match):
        SwarmConfig(**kw)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = SwarmConfig(temperature=0.7, top_k_override=[None, 2], early_exit_share=float("inf"))
    d = cfg.to_dict()
    assert d["temperature"] == [0.7] and d["top_k_override"] == [None, 2]
    assert SwarmConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown SwarmConfig keys"):
        SwarmConfig.from_dict({**d, "num_agent": 3})
