"""Plan every case of the chosen suites, run them with fixed threads and device, collect rows,
write ``<out>/<timestamp>/`` results.

The runner receives the suites to run as ``{name: plan(ctx) -> list[Case]}``; it never looks them up
itself, so a suite module (``moe_layer``'s own CLI) may call :func:`execute` without an import circle
through the registry. Progress goes to stderr (bench/progress.py); with ``max_minutes`` no case starts
once the budget is spent, and the cases left are listed as ``not run``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch

from moe_swarm.bench.context import BenchContext, Case, SuiteUnavailable, resolve_device
from moe_swarm.bench.progress import RunProgress, clock
from moe_swarm.bench.results import EnvInfo, Row, write_results_json

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("bench-results")

Suite = Callable[[BenchContext], list[Case]]
MAX_MINUTES_HELP = "start no case after this many minutes; the results list the cases not run"
NOT_RUN = "not run"  # problem status of a case left out because the time budget was spent


def one_case(suite: str, run: Callable[[BenchContext], list[Row]]) -> Suite:
    """A suite of a single fp32 case, ``run(ctx)`` whole (a comparison that cannot be split)."""

    def plan(ctx: BenchContext) -> list[Case]:
        return [Case(suite, suite, lambda: run(ctx))]

    return plan


@dataclass
class BenchReport:
    rows: list[Row]
    problems: list[dict]  # {"suite", "what", "status": "skipped" | "failed" | "not run", "reason"}
    meta: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        return [p for p in self.problems if p["status"] == "failed"]


def plan_cases(suites: Mapping[str, Suite], ctx: BenchContext) -> list[Case]:
    """Every case of ``suites`` in order; a suite that cannot plan is recorded as skipped or failed."""
    cases: list[Case] = []
    for name, plan in suites.items():
        try:
            cases += plan(ctx)
        except SuiteUnavailable as e:
            ctx.report_problem(name, name, str(e), status="skipped")
            log.warning("suite %s skipped: %s", name, e)
        except Exception as e:  # a broken suite must not hide the others' results
            ctx.report_problem(name, name, _failure(e), status="failed")
            log.error("suite %s failed: %s", name, e)
    return cases


def run_cases(
    cases: list[Case], ctx: BenchContext, max_minutes: float | None = None
) -> tuple[list[Row], dict[str, float]]:
    """Run ``cases`` in order with progress on stderr; returns the rows and the seconds per suite."""
    progress = RunProgress(len(cases))
    rows: list[Row] = []
    seconds = {c.suite: 0.0 for c in cases}
    keys: dict[str, set] = {c.suite: set() for c in cases}
    unavailable: set[str] = set()
    for case in cases:
        if case.suite in unavailable:
            continue
        if max_minutes is not None and progress.elapsed >= max_minutes * 60:
            reason = f"--max-minutes {max_minutes:g} spent ({clock(progress.elapsed)} elapsed)"
            ctx.report_problem(case.suite, case.label, reason, status=NOT_RUN)
            continue
        progress.start(case.label)
        start = time.perf_counter()
        try:
            case_rows = case.run()
            _check_case_rows(case, case_rows, keys[case.suite])
            rows += case_rows
        except SuiteUnavailable as e:
            ctx.report_problem(case.suite, case.suite, str(e), status="skipped")
            unavailable.add(case.suite)
            log.warning("suite %s skipped: %s", case.suite, e)
        except Exception as e:  # a broken case must not hide the others' results
            ctx.report_problem(case.suite, case.label, _failure(e), status="failed")
            log.error("case %s failed: %s", case.label, e)
        finally:
            seconds[case.suite] += time.perf_counter() - start
            progress.finish()
    missing = sum(p["status"] == NOT_RUN for p in ctx.problems)
    progress.close(f" ({missing} not run: time budget spent)" if missing else "")
    return rows, {k: round(v, 3) for k, v in seconds.items()}


def execute(
    suites: Mapping[str, Suite],
    quick: bool = False,
    repeats: int | None = None,
    threads: int = 1,
    device: str = "cpu",
    command: str | None = None,
    max_minutes: float | None = None,
) -> BenchReport:
    """Plan and run ``suites`` (``{name: plan(ctx)}``, in that order) in this process; return the rows.

    ``torch.set_num_threads(threads)`` holds for the whole run and is restored afterwards. A suite
    whose dependency is missing is recorded as skipped; a case that raises is recorded as failed
    (with its traceback) and the remaining cases still run.
    """
    names = list(suites)
    if not names:
        raise ValueError("no suites to run")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if repeats is not None and repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if max_minutes is not None and not max_minutes > 0:
        raise ValueError(f"max_minutes must be > 0, got {max_minutes}")
    dev = resolve_device(device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        env = EnvInfo.collect(dev, torch.get_num_threads())
        ctx = BenchContext(quick=quick, repeats=repeats, threads=env.threads, device=dev, env=env)
        cases = plan_cases(suites, ctx)
        rows, seconds = run_cases(cases, ctx, max_minutes)
    finally:
        torch.set_num_threads(previous_threads)
    meta = {
        "timestamp": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "suites": names,
        "quick": quick,
        "repeats": repeats,
        "threads": env.threads,
        "device": env.device,
        "device_name": env.device_name,
        "cpu": env.cpu.to_dict(),
        "torch_version": env.torch_version,
        "git_commit": env.git_commit,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "suite_seconds": seconds,
        "cases": [c.label for c in cases],
        "max_minutes": max_minutes,
        "missing_cases": [p["what"] for p in ctx.problems if p["status"] == NOT_RUN],
    }
    return BenchReport(rows=rows, problems=ctx.problems, meta=meta)


def _failure(e: Exception) -> str:
    return f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"


def add_run_arguments(parser: argparse.ArgumentParser, *, quick: str, repeats: str, device: str) -> None:
    """The ``--quick/--repeats/--threads/--device/--max-minutes`` flags of a suite module's own CLI (their
    help texts say what they mean for that suite); :func:`execute_cli` reads them back."""
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--repeats", type=int, default=None, help=repeats)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--device", default="cpu", help=device)
    parser.add_argument("--max-minutes", type=float, default=None, help=MAX_MINUTES_HELP)


def execute_cli(
    suites: Mapping[str, Suite], args: argparse.Namespace, prog: str, argv: list[str]
) -> BenchReport:
    """:func:`execute` with the flags of :func:`add_run_arguments`; the report records the command as
    ``python -m <prog> <argv>`` so the numbers can be reproduced from it."""
    return execute(
        suites,
        quick=args.quick,
        repeats=args.repeats,
        threads=args.threads,
        device=args.device,
        command=f"python -m {prog} " + shlex.join(argv),
        max_minutes=args.max_minutes,
    )


def print_problems(report: BenchReport) -> int:
    """One line per skipped or failed case on stderr; the exit code: 1 if anything failed, else 0."""
    for p in report.problems:
        print(f"{p['status']}: {p['what']}: {p['reason']}", file=sys.stderr)
    return 1 if report.failed else 0


def _check_case_rows(case: Case, rows: list[Row], keys: set) -> None:
    """Rows of ``case`` belong to its suite and no (metric, config) appears twice in the suite."""
    name = case.suite
    for r in rows:
        if r.suite != name or not r.metric.startswith(f"{name}/"):
            raise RuntimeError(f"suite {name} returned a row for {r.suite!r} / {r.metric!r}")
        if r.key in keys:
            raise RuntimeError(f"suite {name} returned {r.metric!r} twice for the same config")
        keys.add(r.key)


def new_run_dir(out_base: Path) -> Path:
    """``<out_base>/<YYYYmmdd-HHMMSS>``, with a suffix if two runs start in the same second."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = out_base / stamp
    n = 1
    while run_dir.exists():
        run_dir = out_base / f"{stamp}-{n}"
        n += 1
    run_dir.mkdir(parents=True)
    return run_dir


def write_run(report: BenchReport, out_base: str | Path = DEFAULT_OUT, plots: bool = True) -> Path:
    """Write results.json, results.md and PNG plots to a new timestamped folder under ``out_base``."""
    from moe_swarm.bench.report import results_markdown

    run_dir = new_run_dir(Path(out_base))
    write_results_json(run_dir / "results.json", report.rows, report.meta, report.problems)
    written: list[str] = []
    if plots:
        from moe_swarm.bench.plots import write_plots

        try:
            written = [p.name for p in write_plots(report.rows, run_dir)]
        except Exception as e:  # a plotting problem must not lose the measured numbers
            report.problems.append({"suite": "plots", "what": "plots", "status": "failed", "reason": repr(e)})
            write_results_json(run_dir / "results.json", report.rows, report.meta, report.problems)
    (run_dir / "results.md").write_text(results_markdown(report.rows, report.meta, report.problems, written))
    return run_dir
