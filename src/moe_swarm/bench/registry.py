"""The in-process benchmark suites by name, and :func:`run_benchmarks`, the library entry point.

``SUITES = {name: plan(ctx) -> list[Case]}``. Each entry imports its module when it plans (a plain
import, deferred so that listing the suites does not pull in Lightning or matplotlib). The ``serve``
suite (real sidecars in child processes) is not here: :mod:`moe_swarm.bench.cli` adds it for the
``moe-swarm-bench`` console script and the sidecar's benchmark child.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from moe_swarm.bench.context import BenchContext, Case
from moe_swarm.bench.results import Row
from moe_swarm.bench.runner import Suite, execute, write_run


def moe_layer(ctx: BenchContext) -> list[Case]:
    """MoE layer forward+backward per dispatch implementation."""
    from moe_swarm.bench import moe_layer

    return moe_layer.cases(ctx)


def generate(ctx: BenchContext) -> list[Case]:
    """Decoding: KV cache vs recompute, N agents batched vs sequential."""
    from moe_swarm.bench import generate

    return generate.cases(ctx)


def train_step(ctx: BenchContext) -> list[Case]:
    """A Lightning training step vs a plain PyTorch loop."""
    from moe_swarm.bench import train_step

    return train_step.cases(ctx)


def swarm(ctx: BenchContext) -> list[Case]:
    """The swarm loop's cost as the number of agents grows."""
    from moe_swarm.bench import swarm_suite

    return swarm_suite.cases(ctx)


def parallel(ctx: BenchContext) -> list[Case]:
    """DDP vs FSDP2 vs expert parallelism at 2 and 4 processes: tokens/s, memory per rank, all-to-all share."""
    from moe_swarm.bench import parallel_suite

    return parallel_suite.cases(ctx)


def hf(ctx: BenchContext) -> list[Case]:
    """Import/export of a Mixtral-shaped HF checkpoint vs transformers: seconds and peak RSS."""
    from moe_swarm.bench import hf_suite

    return hf_suite.cases(ctx)


def data(ctx: BenchContext) -> list[Case]:
    """The token loader (0/1/2 workers) vs the model's training tokens/s; prepare vs tokenizers' batch encoding."""
    from moe_swarm.bench import data_suite

    return data_suite.cases(ctx)


SUITES: dict[str, Suite] = {
    "moe_layer": moe_layer,
    "generate": generate,
    "train_step": train_step,
    "swarm": swarm,
    "parallel": parallel,
    "hf": hf,
    "data": data,
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
    max_minutes: float | None = None,
) -> list[Row]:
    """Run suites by name and return every measured row (the sidecar's benchmark child maps num_samples
    to ``repeats`` and passes :data:`moe_swarm.bench.cli.SUITES`, ``serve`` included, as ``available``).

    Metric names look like ``moe_layer/E64k8_t4096_fp32/auto_speedup``. With ``out_dir`` the run is also
    written to ``<out_dir>/<timestamp>/``. Suites that cannot run here are skipped (logged); if a case
    fails, raises RuntimeError after writing the results.
    """
    chosen = select_suites(suites, available)
    report = execute(chosen, quick=quick, repeats=repeats, threads=threads, device=device, max_minutes=max_minutes,
                     command=f"run_benchmarks(suites={suites!r}, quick={quick}, repeats={repeats}, "
                             f"threads={threads}, device={device!r})")  # fmt: skip
    where = ""
    if out_dir is not None:
        where = f"; results in {write_run(report, out_dir)}"
    if report.failed:
        details = "; ".join(f"{p['suite']}: {p['reason'].splitlines()[0]}" for p in report.failed)
        raise RuntimeError(f"benchmark suite(s) failed: {details}{where}")
    return report.rows
