"""Benchmark suites: every number is measured next to its reference, in one process, same config.

The top wing: a client of the model, the trainer and the sidecar, imported by none of them.
``moe-swarm-bench run [--quick] [--max-minutes N]`` (:mod:`moe_swarm.bench.cli`, or
:func:`run_benchmarks`) writes ``bench-results/<timestamp>/`` with results.json, results.md and plots;
``moe-swarm-bench compare A B`` shows what changed.
"""

from moe_swarm.bench.context import BenchContext, Case, SuiteUnavailable
from moe_swarm.bench.registry import SUITES, run_benchmarks, select_suites
from moe_swarm.bench.results import Row, load_results
from moe_swarm.bench.runner import BenchReport, Suite, execute, one_case, write_run

__all__ = [
    "SUITES",
    "BenchContext",
    "BenchReport",
    "Case",
    "Row",
    "Suite",
    "SuiteUnavailable",
    "execute",
    "load_results",
    "one_case",
    "run_benchmarks",
    "select_suites",
    "write_run",
]
