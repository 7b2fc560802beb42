"""Step-level swarm evaluation: the step swarm against greedy and compute-matched controls (plain PyTorch).

For each agent count N of the grid the step swarm solves every problem; each control then gets, per
problem, the swarm's own compute on it:

- ``greedy``: one greedy scratchpad;
- ``independent_majority``: independent full scratchpads from the same agent distribution (temperatures)
  drawn until their forward passes reach the swarm's, plurality vote over their answers;
- ``independent_checker``: the same samples, each also read once by the same step checker (one
  forward pass each, charged), the vote weighted by the product of its steps' checker probabilities;
- ``best_of_n_checker``: of those samples, the one with the highest product;
- ``pass_at_n``: one of the first N samples is right (true pass@N); ``coverage``: one of all the
  samples drawn at the swarm's budget is right.

Forward passes count (row, forward) evaluations of the generator and the checker; FLOPs follow
``moe_swarm.swarm.compute``. Paired bootstrap CIs over problems; the two primary comparisons (swarm -
greedy, swarm - independent_majority) also get Holm-adjusted bootstrap p-values. The checker's ranking
quality on the swarm's own proposals (oracle labels) is reported too.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from moe_swarm.model import MoETransformer
from moe_swarm.swarm.baselines import greedy_config, independent_vote_at_budget
from moe_swarm.swarm.checker import StepChecker, ranking_quality, score_completions
from moe_swarm.swarm.compute import ModelCost
from moe_swarm.swarm.config import SwarmConfig
from moe_swarm.swarm.evaluation import Bootstrap, difficulty_buckets, paired_comparison, summarise_outcomes
from moe_swarm.swarm.solver import SwarmSolver
from moe_swarm.swarm.statistics import holm_adjust
from moe_swarm.swarm.steps import StepSwarm, StepSwarmConfig, label_step_rollouts
from moe_swarm.swarm.voting import vote

log = logging.getLogger("moe_swarm.swarm.step_evaluation")
Outcomes = dict[str, list[float]]
PRIMARY = ("step_swarm - greedy", "step_swarm - independent_majority")


class StepLevelRuns:
    """The model, task, problems and checker of one step-level evaluation; each method is one measured run."""

    def __init__(
        self,
        model: MoETransformer,
        tokenizer,
        task,
        problems: Sequence,
        steps: StepSwarmConfig,
        checker: StepChecker | None,
        max_new_tokens: int = 64,
    ) -> None:
        if not getattr(task, "scratchpad", False):
            raise ValueError(
                "the step-level evaluation needs a scratchpad task (task kwargs scratchpad: true)"
            )
        self.model, self.tok, self.task, self.problems = model, tokenizer, task, list(problems)
        self.steps, self.checker, self.max_new_tokens = steps, checker, max_new_tokens
        self.prompts = [p.prompt for p in self.problems]
        self.cost = ModelCost.from_model(model)

    def em(self, text: str, i: int) -> float:
        return float(self.task.score(text, self.problems[i].answer))

    def greedy(self) -> Outcomes:
        solver = SwarmSolver(
            self.model, greedy_config(self.max_new_tokens), self.tok, canonical=self.task.canonical
        )
        res = solver.solve(self.prompts)
        return {
            "greedy": [self.em(r.text, i) for i, r in enumerate(res)],
            "forward_passes": [float(r.forward_passes) for r in res],
            "flops": [r.flops for r in res],
        }

    def step_swarm(self, cfg: StepSwarmConfig) -> tuple[Outcomes, dict[str, Any]]:
        """The swarm's outcomes, and how well its checker and the likelihood rank its own proposals
        (oracle labels; groups = the proposals of one attempt at one step of one problem)."""
        checker = self.checker if cfg.vote.startswith("checker") else None
        res = StepSwarm(self.model, cfg, self.tok, self.task, checker).solve(self.prompts)
        keys = ("step_swarm", "forward_passes", "flops", "checker_evaluations", "backtracks")
        out: Outcomes = {k: [] for k in keys}
        for i, r in enumerate(res):
            out["step_swarm"].append(self.em(r.completion, i))
            out["forward_passes"].append(float(r.forward_passes))
            out["flops"].append(r.flops)
            out["checker_evaluations"].append(float(r.checker_evaluations))
            out["backtracks"].append(float(r.backtracks))
        rollouts = label_step_rollouts(self.problems, res, self.task)
        scores = {
            "checker": [p.checker for r in res for p in r.proposals],
            "logprob": [p.logprob for r in res for p in r.proposals],
            "label": rollouts.labels.gt(0.5).tolist(),
            "group": rollouts.groups.tolist(),
            "vote_wrong": rollouts.vote_wrong.tolist(),
        }
        ranking = {}
        for name in ("checker", "logprob"):
            x = scores[name]
            if not x or all(math.isnan(v) for v in x):
                continue
            ranking[name] = ranking_quality(x, scores["label"], scores["group"], scores["vote_wrong"])
        return out, ranking

    def independent(self, cfg: StepSwarmConfig, budgets: list[float]) -> Outcomes:
        """Independent scratchpads at the swarm's forward passes per problem, voted plainly and by the checker."""
        agents = SwarmConfig(
            num_agents=cfg.num_agents,
            rounds=0,
            diversity="temperature",
            temperature=list(cfg.temperature),
            score="logprob",
            max_new_tokens=self.max_new_tokens,
            max_batch_rows=cfg.max_batch_rows,  # bounds the KV-cache memory of a wave
            seed=cfg.seed,
        )
        res = independent_vote_at_budget(
            self.model,
            self.tok,
            self.prompts,
            [max(1, int(b)) for b in budgets],
            agents,
            canonical=self.task.canonical,
        )
        names = ("independent_majority", "independent_checker", "best_of_n_checker", "pass_at_n", "coverage")
        out: Outcomes = {
            k: [] for k in (*names, "forward_passes", "flops", "forward_passes_checker", "flops_checker")
        }
        for i, r in enumerate(res):
            recs = r.records
            right = [self.em(x.text, i) for x in recs]
            p_len = len(self.tok.encode(self.prompts[i], bos=True))
            out["independent_majority"].append(self.em(r.answer, i))
            out["pass_at_n"].append(max(right[: cfg.num_agents]))
            out["coverage"].append(max(right))
            out["forward_passes"].append(float(r.forward_passes))
            out["flops"].append(r.flops)
            if self.checker is None:
                for k in (
                    "independent_checker",
                    "best_of_n_checker",
                    "forward_passes_checker",
                    "flops_checker",
                ):
                    out[k].append(float("nan"))
                continue
            # the checker reads each sample once: one more forward pass per sample, so keep the first m
            # samples whose generation + checking forward passes are nearest the swarm's budget
            cum = torch.tensor([x.num_tokens + 1 for x in recs]).cumsum(0)
            m = int((cum - budgets[i]).abs().argmin()) + 1
            kept = recs[:m]
            probs = score_completions(self.checker, self.tok, self.prompts[i], [x.text for x in kept])
            weight = [math.prod(p) if p else 0.0 for p in probs]
            out["independent_checker"].append(self.em(vote([x.answer for x in kept], weight).answer, i))
            out["best_of_n_checker"].append(right[max(range(m), key=weight.__getitem__)])
            out["forward_passes_checker"].append(float(cum[m - 1]))
            gen = self.cost.row_flops(
                torch.tensor([p_len] * m), torch.tensor([x.num_tokens for x in kept])
            ).sum()
            check = self.cost.row_flops(
                torch.tensor([p_len] * m), torch.tensor([x.num_tokens + 1 for x in kept])
            ).sum()
            out["flops_checker"].append(float(gen + check))
        return out


def step_level_report(
    runs: StepLevelRuns, agents: Sequence[int], boot: Bootstrap, ablation_votes: Sequence[str] = ()
) -> dict[str, Any]:
    """Greedy, the step swarm at every N of ``agents`` with its controls, and the comparisons."""
    t0 = time.perf_counter()
    greedy = runs.greedy()
    log.info(
        "greedy: EM %.3f (%.0f s)", sum(greedy["greedy"]) / len(greedy["greedy"]), time.perf_counter() - t0
    )
    cells = []
    for n in sorted({int(a) for a in agents}):
        t0 = time.perf_counter()
        cfg = runs.steps.replace(num_agents=n, wave_agents=min(runs.steps.wave_agents, n))
        swarm, ranking = runs.step_swarm(cfg)
        control = runs.independent(cfg, swarm["forward_passes"])
        ablations = {}
        for v in ablation_votes:
            if v != cfg.vote:
                ablations[v] = runs.step_swarm(cfg.replace(vote=v))[0]
        cells.append(
            {"agents": n, "swarm": swarm, "control": control, "ranking": ranking, "ablations": ablations}
        )
        log.info(
            "N=%d: step swarm EM %.3f at %.0f FP (%.0f s)",
            n,
            sum(swarm["step_swarm"]) / len(swarm["step_swarm"]),
            sum(swarm["forward_passes"]) / len(swarm["forward_passes"]),
            time.perf_counter() - t0,
        )
    buckets = {}
    for name, index in difficulty_buckets(runs.problems).items():
        g = summarise_outcomes(greedy, index)
        rows, comparisons = [], []
        for cell in cells:
            s, c = cell["swarm"], cell["control"]
            row = {"agents": cell["agents"], **summarise_outcomes(s, index)}
            cs = summarise_outcomes(c, index)
            for k in (
                "independent_majority",
                "independent_checker",
                "best_of_n_checker",
                "pass_at_n",
                "coverage",
            ):
                row[k] = cs[k]
            row["independent_forward_passes"] = cs["forward_passes"]
            row["independent_flops"] = cs["flops"]
            row["independent_checker_forward_passes"] = cs["forward_passes_checker"]
            row["independent_checker_flops"] = cs["flops_checker"]
            for v, abl in cell["ablations"].items():
                a = summarise_outcomes(abl, index)
                row[f"step_swarm_{v}"] = a["step_swarm"]
                row[f"step_swarm_{v}_forward_passes"] = a["forward_passes"]
            at = {"agents": cell["agents"]}
            pairs = [
                ("step_swarm - greedy", s["step_swarm"], greedy["greedy"]),
                ("step_swarm - independent_majority", s["step_swarm"], c["independent_majority"]),
            ]
            if runs.checker is not None:
                pairs += [
                    ("step_swarm - independent_checker", s["step_swarm"], c["independent_checker"]),
                    ("step_swarm - best_of_n_checker", s["step_swarm"], c["best_of_n_checker"]),
                    ("independent_majority - greedy", c["independent_majority"], greedy["greedy"]),
                ]
            for v, abl in cell["ablations"].items():
                pairs.append((f"step_swarm - step_swarm_{v}", s["step_swarm"], abl["step_swarm"]))
            cmp = [paired_comparison(lbl, a, b, index, boot, **at) for lbl, a, b in pairs]
            primary = [c_ for c_ in cmp if c_["comparison"] in PRIMARY]
            for c_, p in zip(primary, holm_adjust([c_["p_value"] for c_ in primary])):
                c_["p_holm"] = p
            comparisons += cmp
            rows.append(row)
        buckets[name] = {
            "problems": len(index),
            "greedy": {"greedy": g["greedy"], "forward_passes": g["forward_passes"], "flops": g["flops"]},
            "grid": rows,
            "comparisons": comparisons,
        }
    per_problem = {"greedy": greedy["greedy"]}  # for multi-seed studies (two-level bootstrap)
    for cell in cells:
        n = cell["agents"]
        per_problem[f"step_swarm@{n}"] = cell["swarm"]["step_swarm"]
        for k in ("independent_majority", "independent_checker", "best_of_n_checker"):
            per_problem[f"{k}@{n}"] = cell["control"][k]
    return {
        "per_problem": per_problem,
        "steps_config": runs.steps.to_dict(),
        "checker": runs.checker is not None,
        "ranking": {str(c["agents"]): c["ranking"] for c in cells},
        "bootstrap": boot.to_dict(),
        "buckets": buckets,
    }


def evaluate_steps(
    model: MoETransformer,
    task,
    problems: Callable[[], list],
    steps: dict,
    swarm_state: dict | None,
    settings: dict,
    boot: Bootstrap,
) -> dict[str, Any]:
    """The step-level evaluation from plain config: ``steps`` (StepSwarmConfig fields), the swarm state
    holding the step checker (or None: no checker), ``settings`` (the swarm_eval ``step_level`` keys)."""
    from moe_swarm.data.tokenizer import ByteTokenizer
    from moe_swarm.swarm.state import load_step_checker

    dev = next(model.parameters()).device
    checker = load_step_checker(swarm_state, map_location=dev)[0] if swarm_state is not None else None
    cfg = StepSwarmConfig.from_dict(steps)
    runs = StepLevelRuns(
        model, ByteTokenizer(), task, problems(), cfg, checker, int(settings["max_new_tokens"])
    )
    return step_level_report(runs, list(settings["agents"]), boot, list(settings.get("ablation_votes") or []))
