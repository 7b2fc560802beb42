"""One evaluation harness for every swarm: named solvers on the same problems, compared in pairs.

Plain PyTorch/Python (the Hydra entry point ``moe-swarm-swarm-eval`` only composes and calls this).
An evaluation is a list of ``Arm`` s, each a named solver of the ``Swarm`` protocol with the function
that turns its outcomes into per-problem numbers (exact match, compute, ...). ``run_arms`` runs them
in order on the same problems and seeds; an arm with ``budget_from`` is a budgeted control and gets,
per problem, the forward passes the named earlier arm used. A ``Layout`` says how the report reads
the arms' tables: the grid rows (accuracy and compute of each cell), extra row sections, and the
paired comparisons (bootstrap CI over problems; Holm-adjusted p-values over the primary ones).
``report`` does this per difficulty bucket. What each vote unit runs is in ``moe_swarm.swarm.eval_grids``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moe_swarm.swarm.protocol import BudgetedSwarm, Swarm, SwarmOutcome
from moe_swarm.swarm.statistics import holm_adjust, mean_of_defined, paired_bootstrap_ci

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
class Arm:
    """One named solver of an evaluation and how its per-problem outcomes are measured.

    ``budget_from``: the earlier arm whose compute per problem this budgeted control gets, counted in
    ``budget_unit`` (that arm's ``forward_passes`` or ``flops`` outcome; the control must count the same).
    ``inspect``: findings about the run that are not per problem (e.g. how a scorer ranks proposals).
    """

    name: str
    solver: Swarm | BudgetedSwarm
    measure: Callable[[list[SwarmOutcome]], Outcomes]
    budget_from: str | None = None
    inspect: Callable[[list[SwarmOutcome]], dict] | None = None
    budget_unit: str = "forward_passes"


@dataclass
class Runs:
    """Every arm's per-problem outcome table and findings, by arm name."""

    tables: dict[str, Outcomes]
    findings: dict[str, dict]
    problems: int

    def column(self, arm: str, outcome: str) -> list[float]:
        """One outcome per problem; NaN (undefined) for an arm that was not run."""
        if arm not in self.tables:
            return [math.nan] * self.problems
        return self.tables[arm][outcome]


def run_arms(arms: Sequence[Arm], prompts: Sequence[str], seed: int | None = None) -> Runs:
    """Run every arm on ``prompts`` in order (``seed``: the run seed of all; None = each solver's own)."""
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    runs = Runs({}, {}, len(prompts))
    for arm in arms:
        t0 = time.perf_counter()
        solver = arm.solver
        if arm.budget_from is not None:
            solver = solver.at_budget(runs.tables[arm.budget_from][arm.budget_unit])
        outcomes = solver.solve(list(prompts), seed)
        runs.tables[arm.name] = arm.measure(outcomes)
        if arm.inspect is not None:
            runs.findings[arm.name] = arm.inspect(outcomes)
        log.info(
            "%s: %.1f forward passes/problem in %.1f s",
            arm.name,
            mean_of_defined(runs.tables[arm.name]["forward_passes"]),
            time.perf_counter() - t0,
        )
    return runs


@dataclass
class Row:
    """A report row: ``at`` (its labels), every outcome mean of arm ``main``, then ``columns``
    (row key, arm, outcome): the mean of one outcome of another arm."""

    at: dict[str, Any]
    main: str | None = None
    columns: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class Pair:
    """A paired comparison ``a - b`` of two (arm, outcome) columns, labelled ``label`` and ``at``."""

    label: str
    a: tuple[str, str]
    b: tuple[str, str]
    at: dict[str, Any]


@dataclass
class Layout:
    """How a report reads the arms' tables (see the module docstring).

    ``greedy``: the greedy arm and the outcomes its summary keeps; ``sections``: more row lists, by
    report key; ``pairs``: groups of comparisons, Holm-adjusted within a group over ``primary`` labels.
    """

    greedy: tuple[str, tuple[str, ...]]
    grid: list[Row]
    sections: dict[str, list[Row]] = field(default_factory=dict)
    pairs: list[list[Pair]] = field(default_factory=list)
    primary: tuple[str, ...] = ()


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


def _row(runs: Runs, row: Row, index: list[int]) -> dict[str, Any]:
    out = dict(row.at)
    if row.main is not None:
        out.update(summarise_outcomes(runs.tables[row.main], index))
    for key, arm, outcome in row.columns:
        out[key] = mean_of_defined([runs.column(arm, outcome)[i] for i in index])
    return out


def bucket_report(runs: Runs, layout: Layout, index: list[int], boot: Bootstrap) -> dict[str, Any]:
    """Greedy's summary, the rows and the comparisons over the problems in ``index``."""
    greedy_arm, greedy_keys = layout.greedy
    g = summarise_outcomes(runs.tables[greedy_arm], index)
    comparisons = []
    for group in layout.pairs:
        cmp = [
            paired_comparison(p.label, runs.column(*p.a), runs.column(*p.b), index, boot, **p.at)
            for p in group
        ]
        primary = [c for c in cmp if c["comparison"] in layout.primary]
        for c, p in zip(primary, holm_adjust([c["p_value"] for c in primary])):
            c["p_holm"] = p
        comparisons += cmp
    return {
        "problems": len(index),
        "greedy": {k: g[k] for k in greedy_keys},
        "grid": [_row(runs, row, index) for row in layout.grid],
        **{key: [_row(runs, row, index) for row in rows] for key, rows in layout.sections.items()},
        "comparisons": comparisons,
    }


def report(runs: Runs, layout: Layout, problems: Sequence, boot: Bootstrap) -> dict[str, Any]:
    """The bootstrap settings and one ``bucket_report`` per difficulty."""
    buckets = {
        name: bucket_report(runs, layout, index, boot) for name, index in difficulty_buckets(problems).items()
    }
    return {"bootstrap": boot.to_dict(), "buckets": buckets}


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
    swarm = "step_swarm" if steps else "swarm"
    where = {"agents": max(c["agents"] for c in comps)} if steps else dict(level["reference"])
    out = []
    others = [("greedy", "greedy_margin"), ("independent_majority", "independent_margin")]
    others.append(("independent_majority_at_flops", "independent_margin"))  # step level, FLOP-matched
    for other, margin_key in others:
        name = f"{swarm} - {other}"
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
