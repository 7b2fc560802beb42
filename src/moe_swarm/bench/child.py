"""The benchmark child process of ``RunBenchmark``: runs the suites and writes the rows as JSON.

    python -m moe_swarm.bench.child --out results.json --repeats 3 --suites moe_layer --quick

Runs in its own process (never forked from the server) so timings are not disturbed by the server's
threads and a crash cannot take the server down.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moe_swarm.atomic import atomic_write_text


def rows_to_json(rows: list) -> list[dict]:
    """``metric``/``value`` plus the row's other scalar fields as string labels."""
    out = []
    for row in rows:
        labels = {}
        for name in ("suite", "unit", "reference", "reference_value", "ratio", "higher_is_better", "device",
                     "threads", "note"):  # fmt: skip
            value = getattr(row, name, None)
            if value not in (None, ""):
                labels[name] = str(value)
        out.append({"metric": str(row.metric), "value": float(row.value), "labels": labels})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run benchmark suites for the gRPC sidecar")
    parser.add_argument("--out", type=Path, required=True, help="where to write the rows (JSON)")
    parser.add_argument("--repeats", type=int, required=True, help="timed repeats per measurement")
    parser.add_argument("--suites", default="", help="comma-separated suite names (empty: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds, not minutes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from moe_swarm.bench import run_benchmarks
    from moe_swarm.bench.cli import SUITES
    from moe_swarm.bench.machine import CpuInfo

    suites = [s for s in args.suites.split(",") if s] or None
    cpu = CpuInfo.collect(args.threads)
    print(f"benchmark: suites={suites or 'all'} repeats={args.repeats} quick={args.quick}", flush=True)
    print(f"benchmark: CPU {cpu.describe()}", flush=True)
    rows = run_benchmarks(suites=suites, quick=args.quick, repeats=args.repeats, threads=args.threads,
                          device=args.device, available=SUITES)  # fmt: skip
    payload = rows_to_json(rows)
    atomic_write_text(args.out, json.dumps({"rows": payload, "cpu": cpu.to_dict()}, indent=1))
    print(f"benchmark: {len(payload)} rows written to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
