"""What every suite receives (run options and a row factory) and what it gives back: its cases.

A suite is ``plan(ctx) -> list[Case]``: planning is cheap (no model is built), so the runner knows
every case before it starts one, can show "case i of n" with an ETA, and can stop starting cases when
a time budget is spent; a case's ``run()`` does the work and returns its rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from moe_swarm.bench.results import EnvInfo, Row, make_row

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Precisions that compute in bf16 (``bf16_mixed``: fp32 parameters under bf16 autocast).
BF16_PRECISIONS = ("bf16", "bf16_mixed")


@dataclass(frozen=True)
class Case:
    """One timed comparison of a suite; ``precisions`` are those it computes in (``fp32``, ``bf16``,
    ``bf16_mixed``)."""

    suite: str
    name: str
    run: Callable[[], list[Row]]
    precisions: tuple[str, ...] = ("fp32",)

    @property
    def label(self) -> str:
        return f"{self.suite}/{self.name}"


class SuiteUnavailable(RuntimeError):
    """A suite that cannot run on this machine (e.g. it needs CUDA); the runner reports it as skipped."""


@dataclass
class BenchContext:
    """Options shared by all suites. ``repeats=None`` lets each suite pick its default."""

    quick: bool
    repeats: int | None
    threads: int
    device: torch.device
    env: EnvInfo
    seed: int = 0
    problems: list[dict] = field(default_factory=list)  # parts skipped or failed, for results.json

    def repeats_or(self, full: int, quick: int) -> int:
        if self.repeats is not None:
            return self.repeats
        return quick if self.quick else full

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def report_problem(self, suite: str, what: str, reason: str, status: str = "skipped") -> None:
        """Record a part of a suite that did not run (``skipped``) or broke (``failed``)."""
        self.problems.append({"suite": suite, "what": what, "status": status, "reason": reason})

    def precisions(self, suite: str, wanted: tuple[str, ...]) -> tuple[str, ...]:
        """``wanted`` less the bf16 ones on a CPU without native bf16 (noted once per suite as skipped)."""
        if self.device.type != "cpu" or self.env.cpu.native_bf16:
            return wanted
        kept = tuple(p for p in wanted if p not in BF16_PRECISIONS)
        left_out = [p for p in wanted if p in BF16_PRECISIONS]
        what = f"{suite}/bf16 cases"
        if left_out and not any(p["what"] == what for p in self.problems):
            self.report_problem(
                suite, what, f"{', '.join(left_out)} left out: {self.env.cpu.bf16_skip_reason()}"
            )
        return kept

    def row(self, suite: str, metric: str, value: float, unit: str, **kw) -> Row:
        """A row for this run; see :func:`moe_swarm.bench.results.make_row` for the keywords."""
        return make_row(self.env, suite, metric, value, unit, **kw)


def resolve_device(device: str) -> torch.device:
    """``"cpu"`` or ``"cuda"`` (optionally ``"cuda:N"``), checked to exist on this machine."""
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} requested but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}); run with --device cpu or on a machine with a CUDA build of torch"
        )
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev
