"""The seed study combines step-level reports; FLOP-matched comparisons join the primaries where run."""

import random

import pytest

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
        pp["step_swarm_plurality@16"] = col(0.6)
        pp["coverage@16"] = [1.0] * n
        pp["greedy@4"] = pp["step_swarm@4"] = col(0.5)  # a smaller N the study can be asked for
    ranking = {"16": {"checker": {"auc_vote_wrong": 0.8 if flops else None}}}
    return {"task": {"name": "mul"}, "step_level": {"per_problem": pp, "ranking": ranking}}


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


def test_selection_gap_and_goals_are_read_from_the_runs():
    runs = [report(1, True), report(2, True)]
    f = study(runs, samples=200)["mul"]
    m, gap = f["means"], f["selection_gap"]
    assert gap["plurality_gap"] == pytest.approx(1.0 - m["step_swarm_plurality"])
    closed = (m["step_swarm"] - m["step_swarm_plurality"]) / (1.0 - m["step_swarm_plurality"])
    assert gap["step_swarm_closed"] == pytest.approx(closed)
    assert f["goals"]["third_of_selection_gap_closed"] == (closed >= 1 / 3)
    assert f["goals"]["checker_auc_vote_wrong_ge_0.75"] is True and f["checker_auc_vote_wrong"] == [0.8, 0.8]
    swarm_vs_greedy = next(c for c in f["comparisons"] if c["comparison"] == "step_swarm - greedy")
    assert f["goals"]["swarm_minus_greedy_ge_5"] == (
        swarm_vs_greedy["diff"] >= 0.05 and swarm_vs_greedy["low"] > 0
    )
    assert "gap closed" in markdown({"mul": f})
    assert study(runs, samples=100, agents=4)["mul"]["agents"] == 4
    with pytest.raises(ValueError, match="N=8 is not in every run"):
        study(runs, samples=100, agents=8)
    bare = study([report(1, False)], samples=100)["mul"]  # runs without the plurality ablation or coverage
    assert bare["selection_gap"] is None and bare["goals"]["third_of_selection_gap_closed"] is None


def test_the_vote_chosen_on_validation_is_applied_to_each_seeds_test_records():
    runs = [report(1, True) | {"checkpoint": "s1.ckpt", "split": "test"},
            report(2, True) | {"checkpoint": "s2.ckpt", "split": "test"}]  # fmt: skip

    def val(ckpt: str, ems: dict[str, float], split: str = "val") -> dict:
        pp = {f"{m}@16": [1.0] * int(10 * em) + [0.0] * (10 - int(10 * em)) for m, em in ems.items()}
        return {"checkpoint": ckpt, "split": split, "n_test": 10, "step_level": {"per_problem": pp}}

    vals = [val("s1.ckpt", {"step_swarm": 0.5, "step_swarm_selector": 0.7, "step_swarm_plurality": 0.6}),
            val("s2.ckpt", {"step_swarm": 0.6, "step_swarm_selector": 0.6, "step_swarm_plurality": 0.6})]  # fmt: skip
    f = study(runs, samples=200, val_reports=vals)["mul"]
    assert [c["chosen"] for c in f["val_chosen"]] == [
        "step_swarm_selector",
        "step_swarm",
    ]  # a tie: the earlier
    picked = [runs[0]["step_level"]["per_problem"]["step_swarm_selector@16"],
              runs[1]["step_level"]["per_problem"]["step_swarm@16"]]  # fmt: skip
    assert f["means"]["step_swarm_val_chosen"] == pytest.approx(sum(sum(v) / len(v) for v in picked) / 2)
    row = next(c for c in f["comparisons"] if c["comparison"] == "step_swarm_val_chosen - greedy")
    greedy = [r["step_level"]["per_problem"]["greedy"] for r in runs]
    assert row["diff"] == pytest.approx(
        f["means"]["step_swarm_val_chosen"] - sum(sum(g) / len(g) for g in greedy) / 2
    )
    assert "p_holm" not in row and len([c for c in f["comparisons"] if "p_holm" in c]) == 3
    assert "vote chosen on validation" in markdown({"mul": f})
    assert "val_chosen" not in study(runs, samples=100)["mul"]
    with pytest.raises(ValueError, match="no --val evaluation of s2.ckpt"):
        study(runs, samples=100, val_reports=vals[:1])
    no_selector = [report(1, True) | {"checkpoint": "s1.ckpt", "split": "test"}]
    del no_selector[0]["step_level"]["per_problem"]["step_swarm_selector@16"]
    only = study(no_selector, samples=100, val_reports=vals)["mul"]["val_chosen"][0]
    assert only["chosen"] == "step_swarm_plurality" and "step_swarm_selector" not in only["val_em"]
    with pytest.raises(ValueError, match="split=test, not val"):
        study(runs, samples=100, val_reports=[vals[0], val("s2.ckpt", {"step_swarm": 0.5}, split="test")])
