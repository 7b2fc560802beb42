"""Honest controls built from the same machinery as the swarm.

- ``greedy``: one greedy agent, no router noise, one round.
- ``independent_vote_at_budget``: independent agents (no refinement, no injection) + plain majority
  vote, given the same agent-forward-passes per problem as the run it is compared with.
- ``diversity_controls``: the same swarm with temperature-only, routing-only and both kinds of diversity.
- ``summarise_results``: exact match, true pass@N, coverage and mean compute of a list of results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from moe_swarm.model import MoETransformer
from moe_swarm.swarm.agents import AgentBatch, make_agents
from moe_swarm.swarm.buffer import ThoughtRecord
from moe_swarm.swarm.config import SwarmConfig
from moe_swarm.swarm.outcomes import outcome_table
from moe_swarm.swarm.solver import PromptLike, SwarmResult, SwarmSolver, default_canonical
from moe_swarm.swarm.voting import vote

BUDGET_UNITS = ("forward_passes", "flops")  # what a compute-matched control's budget counts


def greedy_config(max_new_tokens: int = 16) -> SwarmConfig:
    """One greedy agent, unperturbed router, a single round: plain greedy decoding."""
    return SwarmConfig(
        num_agents=1,
        rounds=0,
        diversity="none",
        score="logprob",
        vote="plurality",
        early_exit_share=math.inf,
        max_new_tokens=max_new_tokens,
    )


def greedy(
    model: MoETransformer,
    tokenizer,
    prompts: Sequence[PromptLike],
    max_new_tokens: int = 16,
    canonical: Callable[[str], str] = default_canonical,
) -> list[SwarmResult]:
    return SwarmSolver(model, greedy_config(max_new_tokens), tokenizer, canonical=canonical).solve(prompts)


def independent_config(cfg: SwarmConfig) -> SwarmConfig:
    """The control for ``cfg``: same agent distribution, fresh independent agents every round,
    plain majority vote over all records, no early exit, no thought injection."""
    return cfg.replace(
        refine="redraw", vote="plurality", vote_rounds="all", early_exit_share=math.inf, inject_top_k=0
    )


def diversity_controls(cfg: SwarmConfig) -> dict[str, SwarmConfig]:
    """``cfg`` with each diversity mode: {"temperature", "routing", "both"} -> config."""
    return {mode: cfg.replace(diversity=mode) for mode in ("temperature", "routing", "both")}


def independent_vote_at_budget(
    model: MoETransformer,
    tokenizer,
    prompts: Sequence[PromptLike],
    budgets: int | Sequence[int],
    cfg: SwarmConfig,
    canonical: Callable[[str], str] = default_canonical,
    wave_agents: int | None = None,
    max_waves: int = 1000,
    unit: str = "forward_passes",
) -> list[SwarmResult]:
    """Independent agents + plain majority vote at (about) ``budgets[i]`` of ``unit`` per problem:
    agent-forward-passes (``"forward_passes"``, the default) or FLOPs (``"flops"``).

    Agents are drawn from ``cfg``'s distribution in waves of ``wave_agents`` (default
    ``cfg.num_agents``), all unfinished problems batched together, until a problem's agents have used at
    least its budget. Then the first m agents are kept, with m the count whose total cost is nearest to
    the budget (ties: fewer agents, at least one). Agents are independent, so the first m of a longer
    run are exactly a run of m agents; the unused agents' compute is not charged.
    """
    if unit not in BUDGET_UNITS:
        raise ValueError(f"budget unit must be one of {BUDGET_UNITS}, got {unit!r}")
    solver = SwarmSolver(model, independent_config(cfg), tokenizer, canonical=canonical)
    ids = solver.encode(prompts)
    n = len(ids)
    if isinstance(budgets, int):
        budgets = [budgets] * n
    budgets = [float(int(b)) if unit == "forward_passes" else float(b) for b in budgets]
    if len(budgets) != n:
        raise ValueError(f"got {n} prompts but {len(budgets)} budgets")
    if any(not b >= (1.0 if unit == "forward_passes" else 1e-300) for b in budgets):  # NaN fails too
        raise ValueError(f"budgets must be >= 1 forward pass (or > 0 FLOPs), got {budgets}")
    if n == 0:
        return []
    solver.check_lengths(ids)
    wave = wave_agents or cfg.num_agents
    seeds = [solver.problem_seed(p) for p in ids]
    rows: list[list[ThoughtRecord]] = [[] for _ in range(n)]
    used = torch.zeros(n, dtype=torch.float64)
    flops_rows: list[list[float]] = [[] for _ in range(n)]
    proc_rows: list[list[int]] = [[] for _ in range(n)]
    active = list(range(n))
    for w in range(max_waves):
        if not active:
            break
        agents = AgentBatch.cat([make_agents(solver.cfg, wave, w, seeds[p]) for p in active])
        problem_index = torch.tensor(active).repeat_interleave(wave)
        props = solver.propose(ids, problem_index, agents)
        scores = solver.score(props)
        records = solver.make_records(props, scores, list(range(n)), w, torch.full((len(active),), wave))
        cost = props.lengths if unit == "forward_passes" else props.flops
        used.index_add_(0, problem_index, cost.to(torch.float64).cpu())
        fl, pr = props.flops.tolist(), props.tokens_processed.tolist()
        for j, p in enumerate(active):
            sl = slice(j * wave, (j + 1) * wave)
            rows[p].extend(records[sl])
            flops_rows[p].extend(fl[sl])
            proc_rows[p].extend(pr[sl])
        active = [p for p in active if float(used[p]) < budgets[p]]
    else:
        if active:
            raise RuntimeError(f"{len(active)} problems did not reach their budget in {max_waves} waves")
    results = []
    for p in range(n):
        per_agent = [float(r.num_tokens) for r in rows[p]] if unit == "forward_passes" else flops_rows[p]
        cum = torch.tensor(per_agent, dtype=torch.float64).cumsum(0)
        m = int((cum - budgets[p]).abs().argmin()) + 1  # argmin returns the first (fewest agents) on ties
        kept = rows[p][:m]
        v = vote([r.answer for r in kept])
        best = max((r for r in kept if r.answer == v.answer), key=lambda r: r.score)
        results.append(
            SwarmResult(
                answer=v.answer,
                vote_share=v.share,
                votes=v.votes,
                forward_passes=int(sum(r.num_tokens for r in kept)),
                flops=float(sum(flops_rows[p][:m])),
                rounds_used=kept[-1].round + 1,
                tokens_processed=int(sum(proc_rows[p][:m])),
                exited_early=False,
                text=best.text,
                records=kept,
            )
        )
    return results


def summarise_results(results: Sequence[SwarmResult], problems: Sequence, task) -> dict:
    """Means over problems of the swarm's exact match (``swarm``), true ``pass_at_n`` (a first-round
    record is right), ``coverage`` (any record is right), vote share and compute; plus ``swarm`` per
    difficulty when problems have one. Outcome names as in ``moe_swarm.swarm.outcomes``."""
    if len(results) != len(problems):
        raise ValueError(f"{len(results)} results for {len(problems)} problems")
    if not results:
        raise ValueError("nothing to summarise")
    table = outcome_table(results, [p.answer for p in problems], task)
    n = len(results)
    out = {"n": n, **{k: sum(table[k]) / n for k in ("swarm", "pass_at_n", "coverage")}}
    out["vote_share"] = sum(r.vote_share for r in results) / n
    for k in ("forward_passes", "flops", "rounds_used"):
        out[k] = sum(table[k]) / n
    buckets: dict[str, list[float]] = {}
    for ok, p in zip(table["swarm"], problems):
        difficulty = getattr(p, "difficulty", None)
        if difficulty is not None:
            buckets.setdefault(str(difficulty), []).append(ok)
    out["swarm_by_difficulty"] = {k: sum(v) / len(v) for k, v in sorted(buckets.items())}
    return out
