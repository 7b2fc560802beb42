"""The benchmark suites of this package by name, and :func:`run_benchmarks`, the library entry point.

``SUITES = {name: run(ctx) -> list[Row]}``. Each entry imports its module when it runs (a plain import,
deferred so that listing the suites does not pull in Lightning or matplotlib). Packages above ``bench``
add their own suites by passing them in: the gRPC sidecar's ``serve`` suite lives in
:mod:`moe_swarm.serve.benchmarks`, because ``bench`` never imports ``serve``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from moe_swarm.bench.context import BenchContext
from moe_swarm.bench.results import Row
from moe_swarm.bench.runner import Suite, execute, write_run


def moe_layer(ctx: BenchContext) -> list[Row]:
    """MoE layer forward+backward per dispatch implementation."""
    from moe_swarm.bench import moe_layer

    return moe_layer.run(ctx)


def generate(ctx: BenchContext) -> list[Row]:
    """Decoding: KV cache vs recompute, N agents batched vs sequential."""
    from moe_swarm.bench import generate

    return generate.run(ctx)


def train_step(ctx: BenchContext) -> list[Row]:
    """A Lightning training step vs a plain PyTorch loop."""
    from moe_swarm.bench import train_step

    return train_step.run(ctx)


def swarm(ctx: BenchContext) -> list[Row]:
    """The swarm loop's cost as the number of agents grows."""
    from moe_swarm.bench import swarm_suite

    return swarm_suite.run(ctx)


def parallel(ctx: BenchContext) -> list[Row]:
    """DDP vs FSDP2 vs expert parallelism at 2 and 4 processes: tokens/s, memory per rank, all-to-all share."""
    from moe_swarm.bench import parallel_suite

    return parallel_suite.run(ctx)


SUITES: dict[str, Suite] = {
    "moe_layer": moe_layer,
    "generate": generate,
    "train_step": train_step,
    "swarm": swarm,
    "parallel": parallel,
}


def select_suites(
    names: str | list[str] | tuple[str, ...] | None, available: Mapping[str, Suite] | None = None
) -> dict[str, Suite]:
    """``{name: suite}`` for the comma-separated or listed ``names`` (``None``/``"all"``: every one), in
    the order of ``available`` (default: :data:`SUITES`)."""
    available = SUITES if available is None else available
    if names is None or names == "all":
        return dict(available)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ValueError(
            f"unknown suite(s) {unknown or names!r}; choose from {', '.join(available)} (comma-separated)"
        )
    return {n: fn for n, fn in available.items() if n in names}


def run_benchmarks(
    suites: str | list[str] | None = None,
    quick: bool = False,
    repeats: int | None = None,
    threads: int = 1,
    device: str = "cpu",
    out_dir: str | Path | None = None,
    available: Mapping[str, Suite] | None = None,
) -> list[Row]:
    """Run suites by name and return every measured row (the sidecar's RunBenchmark maps num_samples to
    ``repeats`` and passes its own suites as ``available``).

    Metric names look like ``moe_layer/E64k8_t4096_fp32/auto_speedup``. With ``out_dir`` the run is also
    written to ``<out_dir>/<timestamp>/``. Suites that cannot run here are skipped (logged); if a suite
    fails, raises RuntimeError after writing the results.
    """
    chosen = select_suites(suites, available)
    report = execute(chosen, quick=quick, repeats=repeats, threads=threads, device=device,
                     command=f"run_benchmarks(suites={suites!r}, quick={quick}, repeats={repeats}, "
                             f"threads={threads}, device={device!r})")  # fmt: skip
    where = ""
    if out_dir is not None:
        where = f"; results in {write_run(report, out_dir)}"
    if report.failed:
        details = "; ".join(f"{p['suite']}: {p['reason'].splitlines()[0]}" for p in report.failed)
        raise RuntimeError(f"benchmark suite(s) failed: {details}{where}")
    return report.rows
