"""The seed study combines step-level reports; FLOP-matched comparisons join the primaries where run."""

import random

from moe_swarm.reporting.swarm_study import markdown, study


def report(seed: int, flops: bool) -> dict:
    rng = random.Random(seed)
    n = 60

    def col(p: float) -> list[float]:
        return [float(rng.random() < p) for _ in range(n)]

    pp = {"greedy": col(0.5), "step_swarm@16": col(0.7), "independent_majority@16": col(0.5)}
    pp["independent_checker@16"] = col(0.5)
    if flops:
        pp["independent_majority_at_flops@16"] = col(0.5)
        pp["step_swarm_selector@16"] = col(0.7)
    return {"task": {"name": "mul"}, "step_level": {"per_problem": pp}}


def test_flop_matched_and_selector_comparisons_appear_only_where_every_seed_has_them():
    full = study([report(1, True), report(2, True)], samples=200)["mul"]
    names = [c["comparison"] for c in full["comparisons"]]
    assert "step_swarm - independent_majority_at_flops" in names and "step_swarm_selector - greedy" in names
    primary = [c for c in full["comparisons"] if "p_holm" in c]
    assert len(primary) == 3 and all(c["p_holm"] >= c["p_value"] for c in primary)
    mixed = study([report(1, True), report(2, False)], samples=200)["mul"]
    names = [c["comparison"] for c in mixed["comparisons"]]
    assert "step_swarm - independent_majority_at_flops" not in names and len(names) == 3
    assert len([c for c in mixed["comparisons"] if "p_holm" in c]) == 2
    assert "independent_majority_at_flops" in markdown({"mul": full})
