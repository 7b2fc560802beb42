"""Suite ``swarm``: what the swarm loop costs as the number of agents grows.

``SwarmSolver.solve`` on the same prompts with N in {1, 4, 8, 16} agents per problem, interleaved
within each repeat. Early exit is disabled so every N does a fixed amount of work (two proposal
rounds). Reported: wall time, agent-forward-passes (the solver's own compute count) and forward
passes per second, each against N = 1. Because all agents of a round share one batched generate,
wall time should grow far slower than N.
"""

from __future__ import annotations

import torch

from moe_swarm.bench.context import BenchContext, Case
from moe_swarm.bench.results import Row
from moe_swarm.bench.timing import median, time_interleaved
from moe_swarm.data.tokenizer import ByteTokenizer
from moe_swarm.model import MoETransformer, TransformerConfig
from moe_swarm.swarm.config import SwarmConfig
from moe_swarm.swarm.solver import SwarmSolver

SUITE = "swarm"
AGENT_COUNTS = (1, 4, 8, 16)
PROMPTS = ("123*45=", "678*90=", "314*15=", "271*82=")  # equal length: one generate bucket per round


def cases(ctx: BenchContext) -> list[Case]:
    """One case: every agent count is timed interleaved with the others."""
    return [Case(SUITE, "agents" + "_".join(map(str, AGENT_COUNTS)), lambda: run(ctx))]


def run(ctx: BenchContext) -> list[Row]:

    if ctx.quick:
        dims = {"d_model": 64, "n_layers": 2, "n_heads": 2, "moe": {"d_ff": 64, "num_experts": 4}}
        new_tokens, prompts = 8, PROMPTS[:2]
    else:
        dims = {"d_model": 128, "n_layers": 4, "n_heads": 4, "moe": {"d_ff": 256, "num_experts": 8}}
        new_tokens, prompts = 16, PROMPTS
    torch.manual_seed(ctx.seed)
    model = MoETransformer(TransformerConfig.from_dict({**dims, "max_seq_len": 64})).to(ctx.device).eval()
    tokenizer = ByteTokenizer()
    swarm_kw = {
        "rounds": 1,
        "diversity": "both",
        "temperature": (0.7, 1.0),
        "routing_noise": (0.5,),
        "early_exit_share": 2.0,  # > 1 disables early exit: fixed work per N
        "max_new_tokens": new_tokens,
        "seed": ctx.seed,
    }
    solvers = {n: SwarmSolver(model, SwarmConfig(num_agents=n, **swarm_kw), tokenizer) for n in AGENT_COUNTS}
    results: dict[int, list] = {}

    def solve(n: int):
        def call() -> None:
            results[n] = solvers[n].solve(list(prompts))

        return call

    times = time_interleaved(
        {n: solve(n) for n in AGENT_COUNTS},
        repeats=ctx.repeats_or(full=3, quick=2),
        warmup=1,
        device=ctx.device,
    )
    wall = {n: median(t) * 1e3 for n, t in times.items()}
    passes = {n: sum(r.forward_passes for r in results[n]) for n in AGENT_COUNTS}
    rate = {n: passes[n] / (wall[n] / 1e3) for n in AGENT_COUNTS}
    config = {**dims, "prompts": len(prompts), "max_new_tokens": new_tokens,
              **{k: v for k, v in swarm_kw.items() if k != "seed"}}  # fmt: skip
    config["temperature"] = list(config["temperature"])
    config["routing_noise"] = list(config["routing_noise"])
    rows = []
    base = AGENT_COUNTS[0]
    for n in AGENT_COUNTS:
        case = f"agents{n}"
        ref = f"{SUITE}/agents{base}"
        rows += [
            ctx.row(SUITE, f"{case}/wall_ms", wall[n], "ms", reference=f"{ref}/wall_ms", reference_value=wall[base],
                    higher_is_better=False, config=config, samples=[t * 1e3 for t in times[n]],
                    note=f"{len(prompts)} prompts, {n} agents each, 2 rounds"),
            ctx.row(SUITE, f"{case}/forward_passes", passes[n], "passes", reference=f"{ref}/forward_passes",
                    reference_value=passes[base], higher_is_better=False, config=config,
                    note="agent-forward-passes summed over prompts"),
            ctx.row(SUITE, f"{case}/forward_passes_per_s", rate[n], "passes/s",
                    reference=f"{ref}/forward_passes_per_s", reference_value=rate[base], higher_is_better=True,
                    config=config),
        ]  # fmt: skip
    return rows
