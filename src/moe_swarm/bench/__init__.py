"""Benchmark suites: every number is measured next to its reference, in one process, same config.

``moe-swarm-bench run [--quick]`` (or :func:`run_benchmarks`) writes ``bench-results/<timestamp>/``
with results.json, results.md and plots; ``moe-swarm-bench compare A B`` shows what changed.
"""

from moe_swarm.bench.context import BenchContext, SuiteUnavailable
from moe_swarm.bench.registry import SUITES, run_benchmarks, select_suites
from moe_swarm.bench.results import Row, load_results
from moe_swarm.bench.runner import BenchReport, Suite, execute, write_run

__all__ = [
    "SUITES",
    "BenchContext",
    "BenchReport",
    "Row",
    "Suite",
    "SuiteUnavailable",
    "execute",
    "load_results",
    "run_benchmarks",
    "select_suites",
    "write_run",
]
