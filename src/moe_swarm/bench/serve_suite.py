"""Suite ``serve``: the gRPC sidecar under load and the price of the MCP layer, through real child processes.

Two cases: ``RunInference`` throughput and latency with and without dynamic batching
(:mod:`moe_swarm.bench.loadtest`), and ``get_job`` over MCP stdio vs ``GetJob`` over gRPC
(:mod:`moe_swarm.bench.control_bench`). Not in :data:`moe_swarm.bench.registry.SUITES` (it starts
sidecars): :mod:`moe_swarm.bench.cli` adds it.
"""

from __future__ import annotations

from moe_swarm.bench.context import BenchContext, Case

SUITE = "serve"


def cases(ctx: BenchContext) -> list[Case]:
    from moe_swarm.bench import control_bench, loadtest

    return [
        Case(SUITE, "run_inference", lambda: loadtest.run_suite(ctx)),
        Case(SUITE, "control", lambda: control_bench.rows(ctx)),
    ]
