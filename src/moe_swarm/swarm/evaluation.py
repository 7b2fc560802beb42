"""Answer-level swarm evaluation: greedy, the swarm grid and its compute-matched controls on fixed problems.

Plain PyTorch/Python (the Hydra entry point ``moe-swarm-swarm-eval`` only composes and calls this).
``AnswerLevelRuns`` holds the model, task and problems; each method is one measured run returning
per-problem outcomes (``moe_swarm.swarm.outcomes``). ``answer_level_report`` runs the grid and puts
every outcome mean and every paired comparison (bootstrap CI over problems) into one JSON-able dict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moe_swarm.model import MoETransformer
from moe_swarm.swarm.baselines import greedy_config, independent_vote_at_budget
from moe_swarm.swarm.config import SwarmConfig
from moe_swarm.swarm.outcomes import outcome_table
from moe_swarm.swarm.solver import SwarmResult, SwarmSolver
from moe_swarm.swarm.statistics import mean_of_defined, paired_bootstrap_ci
from moe_swarm.swarm.value import ValueHead

log = logging.getLogger("moe_swarm.swarm.evaluation")
Outcomes = dict[str, list[float]]


@dataclass
class Bootstrap:
    """Settings of every paired bootstrap in a report."""

    samples: int = 2000
    level: float = 0.95
    seed: int = 0

    def ci(self, a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
        return paired_bootstrap_ci(a, b, samples=self.samples, level=self.level, seed=self.seed)

    def to_dict(self) -> dict[str, float]:
        return {"samples": self.samples, "level": self.level, "seed": self.seed}


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


class AnswerLevelRuns:
    """The model, task, problems and settings of one evaluation; each method is one measured run."""

    def __init__(
        self,
        model: MoETransformer,
        tokenizer,
        task,
        problems: Sequence,
        base_cfg: SwarmConfig,
        value_head: ValueHead | None = None,
        max_batch_rows: int | None = None,
    ) -> None:
        self.model, self.tok, self.task, self.problems = model, tokenizer, task, list(problems)
        self.prompts = [p.prompt for p in self.problems]
        self.answers = [p.answer for p in self.problems]
        self.base = base_cfg if base_cfg.max_batch_rows else base_cfg.replace(max_batch_rows=max_batch_rows)
        self.head = value_head
        require_value_head(base_cfg, value_head)

    def solver(self, cfg: SwarmConfig) -> SwarmSolver:
        head = self.head if cfg.score in ("value", "both") else None
        return SwarmSolver(self.model, cfg, self.tok, canonical=self.task.canonical, value_head=head)

    def outcomes(self, results: list[SwarmResult], score_mode: str) -> Outcomes:
        return outcome_table(results, self.answers, self.task, self.head, score_mode)

    def greedy(self) -> Outcomes:
        cfg = greedy_config(self.base.max_new_tokens).replace(max_batch_rows=self.base.max_batch_rows)
        return outcome_table(self.solver(cfg).solve(self.prompts), self.answers, self.task, None, "logprob")

    def swarm(self, cfg: SwarmConfig) -> Outcomes:
        return self.outcomes(self.solver(cfg).solve(self.prompts), cfg.score)

    def independent(self, cfg: SwarmConfig, budgets: list[int]) -> Outcomes:
        """Independent agents from ``cfg``'s distribution + plain majority vote at ``budgets`` forward passes.

        Outcome ``majority`` is the control's answer; ``rescored`` re-votes the same records with
        ``cfg.score`` weights (isolates what refinement adds beyond the weighting)."""
        control_cfg = cfg.replace(score="logprob")  # the control never uses the value head
        results = independent_vote_at_budget(
            self.model, self.tok, self.prompts, budgets, control_cfg, canonical=self.task.canonical
        )
        return self.outcomes(results, cfg.score)


def difficulty_buckets(problems: Sequence) -> dict[str, list[int]]:
    """Problem indices per difficulty; with more than one difficulty also ``"all"``."""
    buckets: dict[str, list[int]] = {}
    for i, p in enumerate(problems):
        buckets.setdefault(str(getattr(p, "difficulty", "all")), []).append(i)
    if len(buckets) > 1:
        buckets = {"all": list(range(len(problems))), **dict(sorted(buckets.items()))}
    return buckets


def summarise_outcomes(outcomes: Outcomes, index: list[int]) -> dict[str, float]:
    """Mean of every outcome over the problems in ``index`` (undefined (NaN) entries skipped)."""
    return {k: mean_of_defined([v[i] for i in index]) for k, v in outcomes.items()}


def paired_comparison(
    name: str, a: list[float], b: list[float], index: list[int], boot: Bootstrap, **where: Any
) -> dict[str, Any]:
    """``a - b`` over the problems in ``index`` with its bootstrap CI, labelled ``name`` and ``where``."""
    return {"comparison": name, **where, **boot.ci([a[i] for i in index], [b[i] for i in index])}


def find_comparison(comparisons: list[dict], name: str, **where: Any) -> dict | None:
    return next(
        (c for c in comparisons if c["comparison"] == name and all(c.get(k) == v for k, v in where.items())),
        None,
    )


def answer_level_report(runs: AnswerLevelRuns, grid: GridSettings, boot: Bootstrap) -> dict[str, Any]:
    """Greedy, every grid cell (with its equal-forward-pass control) and the diversity controls."""
    log.info("greedy on %d problems", len(runs.problems))
    greedy = runs.greedy()
    cells: dict[tuple[int, int], dict[str, Any]] = {}
    for r in grid.rounds:
        for n in grid.agents:
            t0 = time.perf_counter()
            cfg = runs.base.replace(num_agents=n, rounds=r)
            out = runs.swarm(cfg)
            control = None
            if grid.independent:
                control = runs.independent(cfg, [int(x) for x in out["forward_passes"]])
            cells[(n, r)] = {"outcomes": out, "control": control}
            log.info(
                "N=%d R=%d: swarm EM %.3f (%.1f FP/problem) in %.1f s",
                n,
                r,
                mean_of_defined(out["swarm"]),
                mean_of_defined(out["forward_passes"]),
                time.perf_counter() - t0,
            )
    ref_n, ref_r = grid.reference
    diversity: dict[str, dict[str, Outcomes]] = {}
    budgets = [int(x) for x in cells[(ref_n, ref_r)]["outcomes"]["forward_passes"]]
    for mode in grid.diversity:
        mode_cfg = runs.base.replace(num_agents=ref_n, rounds=ref_r, diversity=str(mode))
        out = cells[(ref_n, ref_r)]["outcomes"] if mode == runs.base.diversity else runs.swarm(mode_cfg)
        diversity[str(mode)] = {"swarm": out, "independent": runs.independent(mode_cfg, budgets)}

    buckets: dict[str, Any] = {}
    for name, index in difficulty_buckets(runs.problems).items():
        rows, comparisons = [], []
        for (n, r), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            out, control = cell["outcomes"], cell["control"]
            row = {"agents": n, "rounds": r, **summarise_outcomes(out, index)}
            at = {"agents": n, "rounds": r}
            pairs = [
                ("swarm - greedy", out["swarm"], greedy["swarm"]),
                ("score_weighted - majority", out["score_weighted"], out["majority"]),
                ("best_of_n_logprob - majority", out["best_of_n_logprob"], out["majority"]),
            ]
            if runs.head is not None:
                pairs.append(("best_of_n_value - majority", out["best_of_n_value"], out["majority"]))
            if control is not None:
                c = summarise_outcomes(control, index)
                row["independent_majority"] = c["majority"]
                row["independent_rescored"] = c["rescored"]
                row["independent_forward_passes"] = c["forward_passes"]
                pairs.append(("swarm - independent_majority", out["swarm"], control["majority"]))
                pairs.append(("swarm - independent_rescored", out["swarm"], control["rescored"]))
            comparisons += [paired_comparison(label, a, b, index, boot, **at) for label, a, b in pairs]
            rows.append(row)
        div_rows = []
        for mode, d in diversity.items():
            s, c = summarise_outcomes(d["swarm"], index), summarise_outcomes(d["independent"], index)
            div_rows.append(
                {
                    "diversity": mode,
                    "swarm": s["swarm"],
                    "swarm_forward_passes": s["forward_passes"],
                    "pass_at_n": s["pass_at_n"],
                    "coverage": s["coverage"],
                    "single_agent": s["single_agent"],
                    "independent_majority": c["majority"],
                    "independent_forward_passes": c["forward_passes"],
                }
            )
        if "temperature" in diversity and "routing" in diversity:
            t, rt = diversity["temperature"], diversity["routing"]
            for label, run, outcome in (
                ("independent_majority", "independent", "majority"),
                ("swarm", "swarm", "swarm"),
            ):
                comparisons.append(
                    paired_comparison(
                        f"temperature - routing ({label})",
                        t[run][outcome],
                        rt[run][outcome],
                        index,
                        boot,
                        agents=ref_n,
                        rounds=ref_r,
                    )
                )
        g = summarise_outcomes(greedy, index)
        buckets[name] = {
            "problems": len(index),
            "greedy": {"swarm": g["swarm"], "forward_passes": g["forward_passes"]},
            "grid": rows,
            "diversity": div_rows,
            "comparisons": comparisons,
        }
    return {
        "reference": {"agents": ref_n, "rounds": ref_r},
        "bootstrap": boot.to_dict(),
        "buckets": buckets,
    }


def evaluate_answers(
    model: MoETransformer,
    task,
    problems: Callable[[], list],
    swarm: dict,
    swarm_state: dict | None,
    settings: dict,
    boot: Bootstrap,
) -> dict[str, Any]:
    """The answer-level evaluation from plain config: ``swarm`` (SwarmConfig fields), the swarm state to
    take the value head from (or None), ``settings`` (the swarm_eval keys ``grid``, ``reference``,
    ``controls``, ``max_batch_rows``). Returns the report section (plus ``swarm_config``, ``value_head``)."""
    from moe_swarm.swarm.state import load_swarm_state

    base = SwarmConfig.from_dict(swarm)
    dev = next(model.parameters()).device
    head = load_swarm_state(swarm_state, map_location=dev)[0] if swarm_state is not None else None
    require_value_head(base, head)
    runs = AnswerLevelRuns(model, _tokenizer(), task, problems(), base, head, settings.get("max_batch_rows"))
    level = answer_level_report(runs, GridSettings.from_config(settings), boot)
    return {**level, "swarm_config": base.to_dict(), "value_head": head is not None}


def _tokenizer():
    from moe_swarm.data.tokenizer import ByteTokenizer

    return ByteTokenizer()


def check_targets(level: dict, targets: dict) -> list[dict[str, Any]]:
    """The configured accuracy targets, each with the measured difference, its CI and whether it was met.

    A target ``swarm - X >= margin`` is met when the point estimate reaches the margin *and* the whole CI
    is above 0. The bucket is the first difficulty with greedy EM in ``[mid_low, mid_high]``; the cell is
    the reference cell (answer level) or the largest N (step level).
    """
    buckets = level["buckets"]
    steps = "steps_config" in level
    names = [k for k in buckets if k != "all" or len(buckets) == 1]
    greedy_key = "greedy" if steps else "swarm"
    mid = [k for k in names if targets["mid_low"] <= buckets[k]["greedy"][greedy_key] <= targets["mid_high"]]
    bucket = mid[0] if mid else next(iter(buckets))
    note = "" if mid else f"no difficulty has greedy EM in [{targets['mid_low']}, {targets['mid_high']}]"
    comps = buckets[bucket]["comparisons"]
    if steps:
        where = {"agents": max(c["agents"] for c in comps)}
        pairs = (
            ("step_swarm - greedy", "greedy_margin"),
            ("step_swarm - independent_majority", "independent_margin"),
        )
    else:
        where = dict(level["reference"])
        pairs = (("swarm - greedy", "greedy_margin"), ("swarm - independent_majority", "independent_margin"))
    out = []
    for name, margin_key in pairs:
        c = find_comparison(comps, name, **where)
        if c is None:
            continue
        margin = float(targets[margin_key])
        out.append(
            {
                "target": f"{name} >= {100 * margin:.0f} points, CI above 0",
                "bucket": bucket,
                "at": ", ".join(f"{k}={v}" for k, v in where.items()),
                "measured": c["diff"],
                "ci": [c["low"], c["high"]],
                "p_holm": c.get("p_holm"),
                "threshold": margin,
                "met": bool(c["diff"] >= margin and c["low"] > 0),
                "note": note,
            }
        )
    return out
