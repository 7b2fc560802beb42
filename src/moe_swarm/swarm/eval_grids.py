"""What the swarm evaluation runs for each vote unit: its solvers (arms), rows and comparisons.

Both levels run greedy first, then for each grid cell the swarm and, at the swarm's own forward
passes per problem, its controls; the harness (``moe_swarm.swarm.evaluation``) runs the arms in this
order and builds the report, whose keys are read by ``moe_swarm.reporting.swarm``.

- answer level (``answer_level``): every (agents N, rounds R) cell of the grid; control: independent
  agents + plain majority (``independent_majority``) and the same records re-voted with the swarm's
  score weights (``independent_rescored``); at the reference cell also the diversity controls.
- step level (``step_level``): the step swarm at each N; controls: independent full scratchpads +
  plurality vote (``independent_majority``), the same samples voted by the step checker
  (``independent_checker``) and its best-of-N; the same swarm with other votes (ablations); and how
  the checker and the likelihood rank the swarm's own proposals (oracle labels). With ``selector`` set
  (and a checker), a ``StepSelector`` is fitted on the swarm's proposals for validation problems and the
  swarm runs again with ``vote="selector"`` (``step_swarm_selector``). With ``match`` holding
  ``"flops"`` the same two controls run again with as many samples as fit in the swarm's FLOPs per
  problem (keys ``*_at_flops``); ``"forward_passes"`` is the equal-forward-pass matching.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moe_swarm.model import MoETransformer
from moe_swarm.swarm.checker import StepChecker
from moe_swarm.swarm.config import SwarmConfig
from moe_swarm.swarm.controls import CheckerVote, IndependentVote, greedy_solver, step_agents_config
from moe_swarm.swarm.evaluation import Arm, Bootstrap, Layout, Outcomes, Pair, Row, report, run_arms
from moe_swarm.swarm.outcomes import outcome_table
from moe_swarm.swarm.policies import AnswerVote, StepVote, make_swarm
from moe_swarm.swarm.protocol import SwarmOutcome
from moe_swarm.swarm.rollouts import label_step_rollouts, validation_selector
from moe_swarm.swarm.statistics import ranking_quality
from moe_swarm.swarm.steps import StepSwarm, StepSwarmConfig
from moe_swarm.swarm.value import ValueHead

PRIMARY = (
    "step_swarm - greedy",
    "step_swarm - independent_majority",
    "step_swarm - independent_majority_at_flops",
)
MATCHINGS = ("forward_passes", "flops")  # the budget units the step-level controls can be matched on
# (row key, outcome) of a diversity row: from the swarm with that diversity, and from its control
DIVERSITY_SWARM = [("swarm", "swarm"), ("swarm_forward_passes", "forward_passes"), ("pass_at_n", "pass_at_n")]
DIVERSITY_SWARM += [("coverage", "coverage"), ("single_agent", "single_agent")]
DIVERSITY_CONTROL = [("independent_majority", "majority"), ("independent_forward_passes", "forward_passes")]
# (row key, control, outcome) of a step-level row: from the independent samples and their checker vote
STEP_CONTROL_COLUMNS = [("independent_majority", "sampled", "independent_majority")]
STEP_CONTROL_COLUMNS += [("independent_checker", "checked", "independent_checker")]
STEP_CONTROL_COLUMNS += [("best_of_n_checker", "checked", "best_of_n_checker")]
STEP_CONTROL_COLUMNS += [("pass_at_n", "sampled", "pass_at_n"), ("coverage", "sampled", "coverage")]
STEP_CONTROL_COLUMNS += [("independent_forward_passes", "sampled", "forward_passes")]
STEP_CONTROL_COLUMNS += [("independent_flops", "sampled", "flops")]
STEP_CONTROL_COLUMNS += [("independent_checker_forward_passes", "checked", "forward_passes")]
STEP_CONTROL_COLUMNS += [("independent_checker_flops", "checked", "flops")]
# the same controls matched on the swarm's FLOPs (suffix _at_flops)
FLOP_CONTROL_COLUMNS = [("independent_majority_at_flops", "sampled", "independent_majority")]
FLOP_CONTROL_COLUMNS += [("independent_checker_at_flops", "checked", "independent_checker")]
FLOP_CONTROL_COLUMNS += [("best_of_n_checker_at_flops", "checked", "best_of_n_checker")]
FLOP_CONTROL_COLUMNS += [("coverage_at_flops", "sampled", "coverage")]
FLOP_CONTROL_COLUMNS += [("independent_at_flops_forward_passes", "sampled", "forward_passes")]
FLOP_CONTROL_COLUMNS += [("independent_at_flops_flops", "sampled", "flops")]
FLOP_CONTROL_COLUMNS += [("independent_checker_at_flops_forward_passes", "checked", "forward_passes")]
FLOP_CONTROL_COLUMNS += [("independent_checker_at_flops_flops", "checked", "flops")]


@dataclass
class GridSettings:
    """Which answer-level runs to make: every (agents, rounds) cell, a reference cell, and controls."""

    agents: list[int]
    rounds: list[int]
    reference: tuple[int, int] | None = None  # None = largest N and R
    independent: bool = True
    diversity: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: dict) -> GridSettings:
        """From the ``grid``, ``reference`` and ``controls`` keys of the swarm_eval config (plain dict)."""
        ref = cfg.get("reference") or {}
        return cls(
            list(cfg["grid"]["agents"]),
            list(cfg["grid"]["rounds"]),
            (ref.get("agents"), ref.get("rounds")),
            bool(cfg["controls"]["independent"]),
            [str(m) for m in cfg["controls"].get("diversity") or []],
        )

    def __post_init__(self) -> None:
        self.agents = sorted({int(n) for n in self.agents})
        self.rounds = sorted({int(r) for r in self.rounds})
        if not self.agents or not self.rounds or self.agents[0] < 1 or self.rounds[0] < 0:
            raise ValueError(
                f"grid.agents must be integers >= 1 and grid.rounds >= 0, got {self.agents} and {self.rounds}"
            )
        n, r = self.reference or (None, None)
        self.reference = (int(n or self.agents[-1]), int(r if r is not None else self.rounds[-1]))
        if self.reference[0] not in self.agents or self.reference[1] not in self.rounds:
            raise ValueError(
                f"reference cell (agents={self.reference[0]}, rounds={self.reference[1]}) must be in the grid "
                f"{self.agents} x {self.rounds}"
            )


def require_value_head(cfg: SwarmConfig, value_head: ValueHead | None) -> None:
    """A clear error when ``cfg.score`` needs a value head and there is none."""
    if cfg.score in ("value", "both") and value_head is None:
        raise ValueError(
            f"swarm.score={cfg.score!r} needs a value head, but none was given; train one with "
            "`moe-swarm-swarm-train checkpoint=...` and evaluate its swarm.ckpt, pass "
            "swarm_state=<swarm_state.pt>, or use swarm=logprob"
        )


# ------------------------------------------------------------------------------------ answer level
def answer_level(
    model: MoETransformer,
    tokenizer,
    task,
    problems: Sequence,
    base: SwarmConfig,
    value_head: ValueHead | None,
    settings: dict,
    boot: Bootstrap,
) -> dict[str, Any]:
    """Greedy, every grid cell (with its equal-forward-pass control) and the diversity controls.

    ``settings``: the swarm_eval keys ``grid``, ``reference``, ``controls``, ``max_batch_rows``."""
    require_value_head(base, value_head)
    grid = GridSettings.from_config(settings)
    if not base.max_batch_rows:
        base = base.replace(max_batch_rows=settings.get("max_batch_rows"))
    answers = [p.answer for p in problems]

    def table(score_mode: str, head: ValueHead | None) -> Callable[[list[SwarmOutcome]], Outcomes]:
        return lambda outs: outcome_table([o.raw for o in outs], answers, task, head, score_mode)

    def swarm_arm(name: str, cfg: SwarmConfig) -> Arm:
        return Arm(name, make_swarm(model, tokenizer, task, cfg, value_head), table(cfg.score, value_head))

    def control_arm(name: str, cfg: SwarmConfig, budget_from: str) -> Arm:
        """Independent agents of ``cfg`` (never the value head); ``rescored`` re-votes them like ``cfg``."""
        solver = IndependentVote(AnswerVote(model, tokenizer, cfg.replace(score="logprob"), task.canonical))
        return Arm(name, solver, table(cfg.score, value_head), budget_from=budget_from)

    greedy = greedy_solver(
        model, tokenizer, base.max_new_tokens, task.canonical, max_batch_rows=base.max_batch_rows
    )
    arms = [Arm("greedy", greedy, table("logprob", None))]
    layout = Layout(greedy=("greedy", ("swarm", "forward_passes")), grid=[])
    for r in grid.rounds:
        for n in grid.agents:
            at = {"agents": n, "rounds": r}
            sw, ind = f"swarm N={n} R={r}", f"independent N={n} R={r}"
            arms.append(swarm_arm(sw, base.replace(num_agents=n, rounds=r)))
            pairs = [
                Pair("swarm - greedy", (sw, "swarm"), ("greedy", "swarm"), at),
                Pair("score_weighted - majority", (sw, "score_weighted"), (sw, "majority"), at),
                Pair("best_of_n_logprob - majority", (sw, "best_of_n_logprob"), (sw, "majority"), at),
            ]
            if value_head is not None:
                pairs.append(
                    Pair("best_of_n_value - majority", (sw, "best_of_n_value"), (sw, "majority"), at)
                )
            columns = []
            if grid.independent:
                arms.append(control_arm(ind, base.replace(num_agents=n, rounds=r), budget_from=sw))
                columns = [
                    ("independent_majority", ind, "majority"),
                    ("independent_rescored", ind, "rescored"),
                    ("independent_forward_passes", ind, "forward_passes"),
                ]
                pairs.append(Pair("swarm - independent_majority", (sw, "swarm"), (ind, "majority"), at))
                pairs.append(Pair("swarm - independent_rescored", (sw, "swarm"), (ind, "rescored"), at))
            layout.grid.append(Row(at, sw, columns))
            layout.pairs.append(pairs)

    ref_n, ref_r = grid.reference
    ref = f"swarm N={ref_n} R={ref_r}"
    diversity: dict[str, tuple[str, str]] = {}
    for mode in dict.fromkeys(grid.diversity):  # the default swarm's own forward passes for each
        cfg = base.replace(num_agents=ref_n, rounds=ref_r, diversity=mode)
        sw = ref if mode == base.diversity else f"{ref} diversity={mode}"
        ind = f"independent {ref} diversity={mode}"
        if sw != ref:
            arms.append(swarm_arm(sw, cfg))
        arms.append(control_arm(ind, cfg, budget_from=ref))
        diversity[mode] = (sw, ind)
    layout.sections["diversity"] = [
        Row(
            {"diversity": mode},
            columns=[(k, sw, o) for k, o in DIVERSITY_SWARM] + [(k, ind, o) for k, o in DIVERSITY_CONTROL],
        )
        for mode, (sw, ind) in diversity.items()
    ]
    if "temperature" in diversity and "routing" in diversity:
        (t_sw, t_ind), (r_sw, r_ind) = diversity["temperature"], diversity["routing"]
        at = {"agents": ref_n, "rounds": ref_r}
        vs_control = (
            "temperature - routing (independent_majority)",
            (t_ind, "majority"),
            (r_ind, "majority"),
        )
        vs_swarm = ("temperature - routing (swarm)", (t_sw, "swarm"), (r_sw, "swarm"))
        layout.pairs.append([Pair(*vs_control, at), Pair(*vs_swarm, at)])
    runs = run_arms(arms, [p.prompt for p in problems])
    return {"reference": {"agents": ref_n, "rounds": ref_r}, **report(runs, layout, problems, boot)}


# ------------------------------------------------------------------------------------ step level
def step_level(
    model: MoETransformer,
    tokenizer,
    task,
    problems: Sequence,
    steps: StepSwarmConfig,
    checker: StepChecker | None,
    settings: dict,
    boot: Bootstrap,
) -> dict[str, Any]:
    """Greedy, the step swarm at every N of ``settings["agents"]`` with its controls and ablations.

    ``settings``: the swarm_eval ``step_level`` keys (``agents``, ``max_new_tokens``, ``ablation_votes``,
    ``match``: the budget units of the controls, default both)."""
    if not getattr(task, "scratchpad", False):
        raise ValueError("the step-level evaluation needs a scratchpad task (task kwargs scratchpad: true)")
    max_new_tokens = int(settings["max_new_tokens"])
    match = list(dict.fromkeys(settings.get("match") or MATCHINGS))
    if not set(match) <= set(MATCHINGS) or "forward_passes" not in match:
        raise ValueError(f"step_level.match must hold 'forward_passes' (and may hold 'flops'), got {match}")

    def em(text: str, i: int) -> float:
        return float(task.score(text, problems[i].answer))

    def compute(outs: list[SwarmOutcome]) -> Outcomes:
        return {
            "forward_passes": [float(o.compute.forward_passes) for o in outs],
            "flops": [o.compute.flops for o in outs],
        }

    def greedy_table(outs: list[SwarmOutcome]) -> Outcomes:
        return {"greedy": [em(o.text, i) for i, o in enumerate(outs)], **compute(outs)}

    def swarm_table(outs: list[SwarmOutcome]) -> Outcomes:
        return {
            "step_swarm": [em(o.text, i) for i, o in enumerate(outs)],
            **compute(outs),
            "checker_evaluations": [float(o.compute.checker_evaluations) for o in outs],
            "backtracks": [float(o.raw.backtracks) for o in outs],
        }

    def independent_table(n: int) -> Callable[[list[SwarmOutcome]], Outcomes]:
        def measure(outs: list[SwarmOutcome]) -> Outcomes:
            right = [[em(x.text, i) for x in o.trace] for i, o in enumerate(outs)]
            return {
                "independent_majority": [em(o.answer, i) for i, o in enumerate(outs)],
                "pass_at_n": [max(r[:n]) for r in right],  # one of the first N samples is right
                "coverage": [max(r) for r in right],  # one of all samples at the budget is right
                **compute(outs),
            }

        return measure

    def checker_table(outs: list[SwarmOutcome]) -> Outcomes:
        best = [o.trace[max(range(len(o.trace)), key=o.weights.__getitem__)] for o in outs]
        return {
            "independent_checker": [em(o.answer, i) for i, o in enumerate(outs)],
            "best_of_n_checker": [em(b.text, i) for i, b in enumerate(best)],
            **compute(outs),
        }

    def ranking(outs: list[SwarmOutcome]) -> dict[str, Any]:
        return proposal_ranking(problems, [o.raw for o in outs], task)

    arms = [Arm("greedy", greedy_solver(model, tokenizer, max_new_tokens, task.canonical), greedy_table)]
    layout = Layout(greedy=("greedy", ("greedy", "forward_passes", "flops")), grid=[], primary=PRIMARY)
    agents = sorted({int(a) for a in settings["agents"]})
    selector, selector_info, sel_cfg = None, None, settings.get("selector")
    if sel_cfg and checker is not None:  # fitted on the swarm's own val-item proposals, never test items
        top = steps.replace(num_agents=agents[-1], wave_agents=min(steps.wave_agents, agents[-1]))
        selector, selector_info = validation_selector(
            StepSwarm(model, top, tokenizer, task, checker),
            task,
            int(sel_cfg["n_val"]),
            int(sel_cfg["seed"]),
            exclude=problems,
        )
    for n in agents:
        cfg = steps.replace(num_agents=n, wave_agents=min(steps.wave_agents, n))
        at = {"agents": n}
        sw, ind, chk = f"step swarm N={n}", f"independent N={n}", f"independent + checker N={n}"
        arms.append(Arm(sw, make_swarm(model, tokenizer, task, cfg, checker), swarm_table, inspect=ranking))
        sampled = AnswerVote(model, tokenizer, step_agents_config(cfg, max_new_tokens), task.canonical)
        samples = IndependentVote(sampled)
        arms.append(Arm(ind, samples, independent_table(n), budget_from=sw))
        if checker is not None:  # reads the same samples again, with the checker
            arms.append(Arm(chk, CheckerVote(samples, checker), checker_table, budget_from=sw))
        columns = [(key, {"sampled": ind, "checked": chk}[arm], o) for key, arm, o in STEP_CONTROL_COLUMNS]
        pairs = [
            Pair("step_swarm - greedy", (sw, "step_swarm"), ("greedy", "greedy"), at),
            Pair("step_swarm - independent_majority", (sw, "step_swarm"), (ind, "independent_majority"), at),
        ]
        if "flops" in match:  # as many samples as fit in the swarm's FLOPs
            ind_f, chk_f = f"{ind} @flops", f"{chk} @flops"
            samples_f = IndependentVote(sampled, unit="flops")
            arms.append(Arm(ind_f, samples_f, independent_table(n), budget_from=sw, budget_unit="flops"))
            if checker is not None:
                chk_arm = CheckerVote(samples_f, checker)
                arms.append(Arm(chk_f, chk_arm, checker_table, budget_from=sw, budget_unit="flops"))
                pairs.append(
                    Pair(
                        "step_swarm - independent_checker_at_flops",
                        (sw, "step_swarm"),
                        (chk_f, "independent_checker"),
                        at,
                    )
                )
            columns += [(k, {"sampled": ind_f, "checked": chk_f}[a], o) for k, a, o in FLOP_CONTROL_COLUMNS]
            pairs.insert(
                2,
                Pair(
                    "step_swarm - independent_majority_at_flops",
                    (sw, "step_swarm"),
                    (ind_f, "independent_majority"),
                    at,
                ),
            )
        if checker is not None:
            pairs += [
                Pair(
                    "step_swarm - independent_checker", (sw, "step_swarm"), (chk, "independent_checker"), at
                ),
                Pair("step_swarm - best_of_n_checker", (sw, "step_swarm"), (chk, "best_of_n_checker"), at),
                Pair(
                    "independent_majority - greedy", (ind, "independent_majority"), ("greedy", "greedy"), at
                ),
            ]
        if selector is not None:
            sel = f"{sw} selector"
            sel_swarm = StepVote(model, tokenizer, task, cfg.replace(vote="selector"), checker, selector)
            arms.append(Arm(sel, sel_swarm, swarm_table))
            columns += [
                ("step_swarm_selector", sel, "step_swarm"),
                ("step_swarm_selector_forward_passes", sel, "forward_passes"),
                ("step_swarm_selector_flops", sel, "flops"),
            ]
            for other, col in (("greedy", ("greedy", "greedy")), ("step_swarm", (sw, "step_swarm"))):
                pairs.append(Pair(f"step_swarm_selector - {other}", (sel, "step_swarm"), col, at))
            if "flops" in match:
                pairs.append(
                    Pair(
                        "step_swarm_selector - independent_majority_at_flops",
                        (sel, "step_swarm"),
                        (f"{ind} @flops", "independent_majority"),
                        at,
                    )
                )
        for v in dict.fromkeys(settings.get("ablation_votes") or []):
            if v == cfg.vote:
                continue
            abl = f"{sw} vote={v}"
            arms.append(
                Arm(abl, make_swarm(model, tokenizer, task, cfg.replace(vote=v), checker), swarm_table)
            )
            columns += [
                (f"step_swarm_{v}", abl, "step_swarm"),
                (f"step_swarm_{v}_forward_passes", abl, "forward_passes"),
            ]
            pairs.append(Pair(f"step_swarm - step_swarm_{v}", (sw, "step_swarm"), (abl, "step_swarm"), at))
        layout.grid.append(Row(at, sw, columns))
        layout.pairs.append(pairs)

    runs = run_arms(arms, [p.prompt for p in problems])
    per_problem = {"greedy": runs.column("greedy", "greedy")}  # for multi-seed studies (two-level bootstrap)
    for n in agents:
        per_problem[f"step_swarm@{n}"] = runs.column(f"step swarm N={n}", "step_swarm")
        per_problem[f"independent_majority@{n}"] = runs.column(f"independent N={n}", "independent_majority")
        per_problem[f"coverage@{n}"] = runs.column(f"independent N={n}", "coverage")  # the gap's top
        for v in dict.fromkeys(settings.get("ablation_votes") or []):
            if v != steps.vote:
                per_problem[f"step_swarm_{v}@{n}"] = runs.column(f"step swarm N={n} vote={v}", "step_swarm")
        for k in ("independent_checker", "best_of_n_checker"):
            per_problem[f"{k}@{n}"] = runs.column(f"independent + checker N={n}", k)
        if selector is not None:
            per_problem[f"step_swarm_selector@{n}"] = runs.column(f"step swarm N={n} selector", "step_swarm")
        if "flops" in match:
            per_problem[f"independent_majority_at_flops@{n}"] = runs.column(
                f"independent N={n} @flops", "independent_majority"
            )
            per_problem[f"independent_checker_at_flops@{n}"] = runs.column(
                f"independent + checker N={n} @flops", "independent_checker"
            )
    return {
        "per_problem": per_problem,
        "steps_config": steps.to_dict(),
        "checker": checker is not None,
        "checker_kind": None if checker is None else getattr(checker, "kind", "full"),
        "selector": selector_info,
        "ranking": {str(n): runs.findings[f"step swarm N={n}"] for n in agents},
        **report(runs, layout, problems, boot),
    }


def proposal_ranking(problems: Sequence, results: Sequence, task) -> dict[str, Any]:
    """How well the checker and the likelihood rank a step swarm's own proposals (oracle labels;
    groups = the proposals of one attempt at one step of one problem)."""
    rollouts = label_step_rollouts(problems, results, task)
    labels, groups, vote_wrong = (
        rollouts.labels.gt(0.5).tolist(),
        rollouts.groups.tolist(),
        rollouts.vote_wrong.tolist(),
    )
    ranking = {}
    for name in ("checker", "logprob"):
        x = [getattr(p, name) for r in results for p in r.proposals]
        if x and not all(math.isnan(v) for v in x):
            ranking[name] = ranking_quality(x, labels, groups, vote_wrong)
    return ranking


# ------------------------------------------------------------------------------------ from config
def evaluate(
    model: MoETransformer,
    task,
    problems: Callable[[], list],
    mode: str,
    settings: dict,
    swarm_state: dict | None,
    boot: Bootstrap,
) -> dict[str, Any]:
    """The evaluation of vote unit ``mode`` ("answers" or "steps") from the plain swarm_eval config
    ``settings``; the scorer (value head or step checker) comes from ``swarm_state`` (None: none).
    ``problems`` is called once the scorer is checked, so a bad request fails before any work."""
    from moe_swarm.data.tokenizer import ByteTokenizer
    from moe_swarm.swarm.state import load_step_checker, load_swarm_state

    dev = next(model.parameters()).device
    if mode == "steps":
        checker = load_step_checker(swarm_state, map_location=dev)[0] if swarm_state is not None else None
        cfg = StepSwarmConfig.from_dict(settings["steps"])
        return step_level(
            model, ByteTokenizer(), task, problems(), cfg, checker, settings["step_level"], boot
        )
    base = SwarmConfig.from_dict(settings["swarm"])
    head = load_swarm_state(swarm_state, map_location=dev)[0] if swarm_state is not None else None
    require_value_head(base, head)
    GridSettings.from_config(settings)
    level = answer_level(model, ByteTokenizer(), task, problems(), base, head, settings, boot)
    return {**level, "swarm_config": base.to_dict(), "value_head": head is not None}
