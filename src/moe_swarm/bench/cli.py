"""``moe-swarm-bench``: run benchmark suites, or compare two runs.

:data:`SUITES` is every suite: the in-process ones of :mod:`moe_swarm.bench.registry` plus ``serve``
(:mod:`moe_swarm.bench.serve_suite`, real sidecars in child processes). ``python -m moe_swarm.bench``
is this CLI over the registry's suites only; the sidecar's benchmark child runs over :data:`SUITES`.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from moe_swarm.bench import registry, serve_suite
from moe_swarm.bench.registry import select_suites
from moe_swarm.bench.runner import MAX_MINUTES_HELP, Suite

SUITES: dict[str, Suite] = {**registry.SUITES, serve_suite.SUITE: serve_suite.cases}


def build_parser(available: Mapping[str, Suite] = SUITES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-swarm-bench",
        description="Time the model, training, the swarm and the sidecar (benchmark suites), or compare "
        "two runs' results. `moe-swarm-bench run --quick` takes a few minutes.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run suites; writes <out>/<timestamp>/results.json, results.md, *.png")
    run.add_argument("--quick", action="store_true", help="a small version of every suite (a few minutes)")
    run.add_argument(
        "--suites", default="all", help=f"comma-separated subset of: {', '.join(available)} (default: all)"
    )
    run.add_argument("--repeats", type=int, help="timed repeats per measurement (default: per suite)")
    run.add_argument("--threads", type=int, default=1, help="torch intra-op threads, fixed (default 1)")
    run.add_argument("--device", default="cpu", help="cpu or cuda (cuda: CUDA-event timing, bf16 models)")
    run.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="parent folder (default bench-results)"
    )
    run.add_argument("--max-minutes", type=float, default=None, help=MAX_MINUTES_HELP)
    cmp = sub.add_parser("compare", help="change per (suite, metric, config) between two results.json files")
    cmp.add_argument("old", type=Path, help="baseline results.json (or its run folder)")
    cmp.add_argument("new", type=Path, help="new results.json (or its run folder)")
    cmp.add_argument(
        "--threshold", type=float, default=5.0, help="percent change counted as noise (default 5)"
    )
    cmp.add_argument("--fail-on-worse", action="store_true", help="exit 1 when a metric got worse beyond it")
    return parser


def cmd_run(args: argparse.Namespace, command: str, available: Mapping[str, Suite]) -> int:
    from moe_swarm.bench.report import console_summary
    from moe_swarm.bench.runner import execute, write_run

    report = execute(
        select_suites(args.suites, available),
        quick=args.quick,
        repeats=args.repeats,
        threads=args.threads,
        device=args.device,
        command=command,
        max_minutes=args.max_minutes,
    )
    run_dir = write_run(report, args.out)
    print(console_summary(report.rows, report.meta, report.problems))
    for p in report.failed:
        print(f"\nsuite {p['suite']} FAILED:\n{p['reason']}", file=sys.stderr)
    print(f"results: {run_dir}")
    return 1 if report.failed else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from moe_swarm.bench.compare import compare_files, format_comparison

    cmp = compare_files(args.old, args.new)
    print(format_comparison(cmp, args.threshold))
    return 1 if args.fail_on_worse and cmp.worse(args.threshold) else 0


def main(argv: list[str] | None = None, available: Mapping[str, Suite] = SUITES) -> int:
    """The CLI over ``available`` suites (default: all of them, ``serve`` included)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(available).parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args, command="moe-swarm-bench " + shlex.join(argv), available=available)
        return cmd_compare(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"moe-swarm-bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
