"""The sidecar's benchmark suites (bench's own plus ``serve``) and the ``moe-swarm-bench`` console script.

``bench`` never imports ``serve``: the ``serve`` suite lives here and is passed to the bench runner.
RunBenchmark validates suite names against :data:`SUITES` and its child process runs them.
"""

from __future__ import annotations

from moe_swarm.bench.context import BenchContext
from moe_swarm.bench.registry import SUITES as BENCH_SUITES
from moe_swarm.bench.results import Row
from moe_swarm.bench.runner import Suite


def serve(ctx: BenchContext) -> list[Row]:
    """RunInference through real sidecars (batching on vs off), and get_job over MCP stdio vs gRPC."""
    from moe_swarm.serve import control_bench, loadtest

    return loadtest.run_suite(ctx) + control_bench.rows(ctx)


SUITES: dict[str, Suite] = {**BENCH_SUITES, "serve": serve}


def main(argv: list[str] | None = None) -> int:
    """``moe-swarm-bench``: the bench CLI over every suite, ``serve`` included."""
    from moe_swarm.bench.__main__ import main as bench_main

    return bench_main(argv, available=SUITES)


if __name__ == "__main__":
    import sys

    sys.exit(main())
