"""The suite registry: ``SUITES = {name: callable(ctx) -> list[Row]}``.

Suites are imported when they run, so a suite whose dependency is not in this tree yet (or not
installed) raises :class:`SuiteUnavailable` and is reported as skipped without breaking the others.
To add a suite, write a module with ``run(ctx: BenchContext) -> list[Row]`` and register it here.

The ``serve`` suite is a hook: the gRPC sidecar provides ``moe_swarm.bench.serve_suite`` with a
``run(ctx)`` function; until that module exists the suite is skipped.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from moe_swarm.bench.context import BenchContext, SuiteUnavailable
from moe_swarm.bench.results import Row

SERVE_SUITE_MODULE = "moe_swarm.bench.serve_suite"


def _module_suite(module: str, needs: str | None = None) -> Callable[[BenchContext], list[Row]]:
    """A suite that imports ``module`` and calls its ``run(ctx)``.

    If ``module`` itself is missing (not a module it imports), the suite is unavailable: ``needs``
    names what has to land first.
    """

    def suite(ctx: BenchContext) -> list[Row]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                raise SuiteUnavailable(f"not available yet: needs {needs or module}") from e
            raise
        return mod.run(ctx)

    suite.__name__ = module.rsplit(".", 1)[-1]
    suite.__doc__ = f"runs {module}.run(ctx)"
    return suite


SUITES: dict[str, Callable[[BenchContext], list[Row]]] = {
    "moe_layer": _module_suite("moe_swarm.bench.moe_layer"),
    "generate": _module_suite("moe_swarm.bench.generate"),
    "train_step": _module_suite("moe_swarm.bench.train_step"),
    "swarm": _module_suite("moe_swarm.bench.swarm_suite"),
    "serve": _module_suite(SERVE_SUITE_MODULE, needs=f"{SERVE_SUITE_MODULE} (written with the gRPC sidecar)"),
}


def parse_suites(names: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Suite names in registry order; ``None`` or ``"all"`` means every registered suite."""
    if names is None or names == "all":
        return list(SUITES)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITES]
    if unknown or not names:
        raise ValueError(
            f"unknown suite(s) {unknown or names!r}; choose from {', '.join(SUITES)} (comma-separated)"
        )
    return [n for n in SUITES if n in names]
