"""One Swarm protocol: each vote-unit policy and each control is a solver of it, and the one harness
reports what the engines compute when called directly (tiny random models, no training)."""

import math

import pytest
import torch
from test_swarm_steps import tiny

from moe_swarm.data import ByteTokenizer, get_task
from moe_swarm.model import MoETransformer
from moe_swarm.swarm import (
    AnswerVote,
    BudgetedSwarm,
    CheckerVote,
    IndependentVote,
    StepChecker,
    StepSwarm,
    StepSwarmConfig,
    StepVote,
    Swarm,
    SwarmConfig,
    SwarmOutcome,
    SwarmSolver,
    ValueHead,
    greedy,
    greedy_solver,
    independent_vote_at_budget,
    make_swarm,
    outcome_table,
)
from moe_swarm.swarm.checker import score_completions
from moe_swarm.swarm.controls import step_agents_config
from moe_swarm.swarm.eval_grids import answer_level, step_level
from moe_swarm.swarm.evaluation import Arm, Bootstrap, Layout, Pair, Row, bucket_report, run_arms

TOK = ByteTokenizer()
TASK = get_task("mul", digits_a=2, digits_b=1)
STEP_TASK = get_task("mul", digits_a=2, digits_b=1, scratchpad=True)


@pytest.fixture(scope="module")
def model() -> MoETransformer:
    return tiny(0)


@pytest.fixture(scope="module")
def checker() -> StepChecker:
    torch.manual_seed(2)
    return StepChecker(tiny(3)).eval()


def test_policies_and_controls_are_solvers_of_the_protocol(model, checker):
    prompts = [p.prompt for p in TASK.generate("train", 3, seed=0)]
    answer_cfg = SwarmConfig(num_agents=3, rounds=1, max_new_tokens=5)
    step_cfg = StepSwarmConfig(num_agents=2, wave_agents=2, max_step_tokens=6, max_steps=2)
    samples = IndependentVote(AnswerVote(model, TOK, answer_cfg, TASK.canonical))
    solvers = {
        "answer": AnswerVote(model, TOK, answer_cfg, TASK.canonical),
        "step": StepVote(model, TOK, STEP_TASK, step_cfg),
        "greedy": greedy_solver(model, TOK, 5, TASK.canonical),
        "independent": samples.at_budget([7, 9.5, 3]),
        "checker": CheckerVote(samples, checker).at_budget([7, 9.5, 3]),
    }
    assert isinstance(samples, BudgetedSwarm) and not isinstance(samples, Swarm)
    for name, solver in solvers.items():
        assert isinstance(solver, Swarm), name
        out = solver.solve(prompts)
        assert len(out) == len(prompts) and all(isinstance(o, SwarmOutcome) for o in out), name
        for o in out:
            assert o.compute.forward_passes >= 1 and o.compute.flops > 0, name
            if name != "step":  # a trajectory cut off by max_steps has no answer line
                assert o.votes[o.answer] == max(o.votes.values()), name
            assert o.trace, name
    assert solvers["step"].vote_unit == "step" and solvers["answer"].vote_unit == "answer"
    with pytest.raises(ValueError, match="budgets"):
        samples.at_budget([5]).solve(prompts)


def test_answer_policy_is_the_answer_level_engine_and_takes_the_run_seed(model):
    prompts = [p.prompt for p in TASK.generate("train", 4, seed=1)]
    cfg = SwarmConfig(num_agents=4, rounds=1, max_new_tokens=5, seed=3)
    direct = SwarmSolver(model, cfg, TOK, canonical=TASK.canonical).solve(prompts)
    policy = AnswerVote(model, TOK, cfg.replace(seed=0), TASK.canonical)
    for o, r in zip(policy.solve(prompts, seed=3), direct, strict=True):
        assert (o.answer, o.text, o.votes) == (r.answer, r.text, r.votes)
        assert o.compute.forward_passes == r.forward_passes and o.compute.flops == r.flops
        assert [x.answer for x in o.trace] == [x.answer for x in r.records]
        assert o.weights == [x.score for x in r.records]


def test_step_policy_is_the_step_engine(model):
    prompts = [p.prompt for p in STEP_TASK.generate("train", 2, seed=0)]
    cfg = StepSwarmConfig(num_agents=2, wave_agents=2, max_step_tokens=6, max_steps=3)
    direct = StepSwarm(model, cfg, TOK, STEP_TASK).solve(prompts)
    for o, r in zip(make_swarm(model, TOK, STEP_TASK, cfg).solve(prompts), direct, strict=True):
        assert (o.answer, o.text, o.votes) == (r.answer, r.completion, r.answer_votes)
        assert o.compute.forward_passes == r.forward_passes and o.compute.flops == r.flops
        assert len(o.trace) == len(r.proposals) and o.raw.backtracks == r.backtracks


def test_make_swarm_passes_the_scorer_only_where_the_config_reads_it(model, checker):
    head = ValueHead(32)
    assert make_swarm(model, TOK, TASK, SwarmConfig(score="logprob"), head).value_head is None
    assert make_swarm(model, TOK, TASK, SwarmConfig(score="both"), head).value_head is head
    assert make_swarm(model, TOK, STEP_TASK, StepSwarmConfig(vote="plurality"), checker).checker is None
    assert make_swarm(model, TOK, STEP_TASK, StepSwarmConfig(vote="checker"), checker).checker is checker


def test_checker_control_revotes_the_same_samples_nearest_the_budget(model, checker):
    prompts = [p.prompt for p in STEP_TASK.generate("train", 2, seed=2)]
    agents = step_agents_config(StepSwarmConfig(num_agents=3, wave_agents=3), max_new_tokens=20)
    samples = IndependentVote(AnswerVote(model, TOK, agents, STEP_TASK.canonical))
    budgets = [30.0, 45.5]
    plain = samples.at_budget(budgets).solve(prompts)
    checked = CheckerVote(samples, checker).at_budget(budgets).solve(prompts)
    for prompt, p, c, budget in zip(prompts, plain, checked, budgets):
        m = len(c.trace)
        assert c.trace == p.trace[:m]  # the same records, not a fresh draw
        used = [sum(x.num_tokens + 1 for x in p.trace[:k]) for k in range(1, len(p.trace) + 1)]
        assert c.compute.forward_passes == used[m - 1]
        assert abs(used[m - 1] - budget) == min(abs(u - budget) for u in used)
        probs = score_completions(checker, TOK, prompt, [x.text for x in c.trace])
        assert c.weights == pytest.approx([math.prod(q) if q else 0.0 for q in probs], rel=1e-6)
        assert c.votes[c.answer] == max(c.votes.values())


def test_run_arms_gives_budgeted_controls_the_named_arms_forward_passes(model):
    prompts = [p.prompt for p in TASK.generate("train", 3, seed=3)]
    cfg = SwarmConfig(num_agents=2, rounds=1, max_new_tokens=5)
    seen = []

    class Recorder(IndependentVote):
        def at_budget(self, budgets):
            seen.append(list(budgets))
            return super().at_budget(budgets)

    def fp(outs):
        return {"forward_passes": [float(o.compute.forward_passes) for o in outs]}

    arms = [
        Arm("swarm", AnswerVote(model, TOK, cfg, TASK.canonical), fp),
        Arm("control", Recorder(AnswerVote(model, TOK, cfg, TASK.canonical)), fp, budget_from="swarm"),
    ]
    runs = run_arms(arms, prompts)
    assert seen == [runs.tables["swarm"]["forward_passes"]]
    assert all(math.isnan(x) for x in runs.column("not run", "forward_passes"))
    layout = Layout(
        greedy=("swarm", ("forward_passes",)),
        grid=[
            Row({"agents": 2}, "swarm", [("control_fp", "control", "forward_passes"), ("x", "absent", "y")])
        ],
        pairs=[
            [
                Pair(
                    "swarm - control",
                    ("swarm", "forward_passes"),
                    ("control", "forward_passes"),
                    {"agents": 2},
                )
            ]
        ],
        primary=("swarm - control",),
    )
    b = bucket_report(runs, layout, [0, 1, 2], Bootstrap(samples=50))
    row = b["grid"][0]
    assert row["agents"] == 2 and math.isnan(row["x"])
    assert row["control_fp"] == pytest.approx(sum(runs.tables["control"]["forward_passes"]) / 3)
    assert b["comparisons"][0]["p_holm"] == b["comparisons"][0]["p_value"]  # a family of one
    with pytest.raises(ValueError, match="unique"):
        run_arms([arms[0], arms[0]], prompts)


def test_answer_level_report_holds_the_engines_numbers(model):
    problems = TASK.generate("train", 4, seed=4)
    prompts, answers = [p.prompt for p in problems], [p.answer for p in problems]
    base = SwarmConfig(num_agents=2, rounds=1, max_new_tokens=5, temperature=[0.7, 1.3])
    settings = {"grid": {"agents": [2], "rounds": [1]}, "controls": {"independent": True, "diversity": []}}
    level = answer_level(model, TOK, TASK, problems, base, None, settings, Bootstrap(samples=100))
    b = level["buckets"]["2x1"]
    g = greedy(model, TOK, prompts, 5, TASK.canonical)
    assert b["greedy"]["swarm"] == pytest.approx(sum(TASK.score(r.answer, a) for r, a in zip(g, answers)) / 4)
    swarm = SwarmSolver(model, base, TOK, canonical=TASK.canonical).solve(prompts)
    table = outcome_table(swarm, answers, TASK)
    control = independent_vote_at_budget(
        model, TOK, prompts, [r.forward_passes for r in swarm], base, canonical=TASK.canonical
    )
    row = b["grid"][0]
    assert (row["agents"], row["rounds"]) == (2, 1)
    assert row["swarm"] == pytest.approx(sum(table["swarm"]) / 4)
    assert row["forward_passes"] == pytest.approx(sum(r.forward_passes for r in swarm) / 4)
    assert row["independent_majority"] == pytest.approx(
        sum(TASK.score(r.answer, a) for r, a in zip(control, answers)) / 4
    )
    assert row["independent_forward_passes"] == pytest.approx(sum(r.forward_passes for r in control) / 4)
    assert level["reference"] == {"agents": 2, "rounds": 1} and b["diversity"] == []


def test_step_level_report_holds_the_engines_numbers(model, checker):
    problems = STEP_TASK.generate("train", 3, seed=5)
    prompts = [p.prompt for p in problems]
    steps = StepSwarmConfig(num_agents=2, wave_agents=2, max_step_tokens=6, max_steps=3, vote="checker")
    settings = {"agents": [2], "max_new_tokens": 20, "ablation_votes": ["plurality"]}
    level = step_level(model, TOK, STEP_TASK, problems, steps, checker, settings, Bootstrap(samples=100))
    b = next(iter(level["buckets"].values()))
    direct = StepSwarm(model, steps, TOK, STEP_TASK, checker).solve(prompts)
    em = [float(STEP_TASK.score(r.completion, p.answer)) for r, p in zip(direct, problems)]
    assert level["per_problem"]["step_swarm@2"] == em
    row = b["grid"][0]
    assert row["forward_passes"] == pytest.approx(sum(r.forward_passes for r in direct) / 3)
    plurality = StepSwarm(model, steps.replace(vote="plurality"), TOK, STEP_TASK).solve(prompts)
    assert row["step_swarm_plurality_forward_passes"] == pytest.approx(
        sum(r.forward_passes for r in plurality) / 3
    )
    agents = step_agents_config(steps, 20)
    control = independent_vote_at_budget(
        model,
        TOK,
        prompts,
        [max(1, int(r.forward_passes)) for r in direct],
        agents,
        canonical=STEP_TASK.canonical,
    )
    assert level["per_problem"]["independent_majority@2"] == [
        float(STEP_TASK.score(r.answer, p.answer)) for r, p in zip(control, problems)
    ]
    assert row["independent_forward_passes"] == pytest.approx(sum(r.forward_passes for r in control) / 3)
    at_flops = independent_vote_at_budget(
        model, TOK, prompts, [r.flops for r in direct], agents, canonical=STEP_TASK.canonical, unit="flops"
    )  # the same control matched on the swarm's FLOPs
    assert level["per_problem"]["independent_majority_at_flops@2"] == [
        float(STEP_TASK.score(r.answer, p.answer)) for r, p in zip(at_flops, problems)
    ]
    assert row["independent_at_flops_flops"] == pytest.approx(sum(r.flops for r in at_flops) / 3)
    assert len([c for c in b["comparisons"] if "p_holm" in c]) == 3  # vs greedy, vs majority at FP and FLOPs
    assert set(level["ranking"]["2"]) == {"checker", "logprob"} and level["checker"] is True
