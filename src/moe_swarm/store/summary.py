"""Run summaries (``<run_dir>/summary.json``): merging across restarts, printing, sweep tables.

A summary is plain JSON written by rank 0 at the end of every run (also a run stopped by
SIGTERM). Rules: a restart never erases what an earlier part of the run measured (the start
metrics survive a resume), and a run that is already complete is reported, not re-run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from moe_swarm.atomic import atomic_write_text

__all__ = [
    "already_complete_message",
    "fmt_number",
    "merge_with_previous",
    "read_summary",
    "write_summary",
    "write_sweep_table",
]


def read_summary(path: Path) -> dict[str, Any] | None:
    """The summary at ``path``, or None if missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def merge_with_previous(new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """Keep what an earlier part of the same run measured: its start metrics (a resumed run does not
    validate before fitting), and its end metrics if this part measured nothing."""
    if not old:
        return new
    out = dict(new)
    if not out.get("metrics_start") and old.get("metrics_start"):
        out["metrics_start"] = old["metrics_start"]
        out["metric_start"] = old.get("metric_start")
    if not out.get("metrics") and old.get("metrics"):
        out["metrics"] = old["metrics"]
        out["metric_end"] = old.get("metric_end")
    return out


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")


def already_complete_message(summary: dict[str, Any], max_steps: int) -> str:
    return (
        f"run {summary.get('run_id')!r} is already complete: {summary.get('global_step')} of "
        f"trainer.max_steps={max_steps} steps, summary in {summary.get('run_dir')}/summary.json "
        f"(left unchanged). To train it further, run again with the same run_id and a larger "
        f"trainer.max_steps (it resumes from its last.ckpt); for a fresh run pick another run_id."
    )


def fmt_number(v: Any) -> str:
    """Human numbers: 4 significant digits for metrics, thousands separators for big values."""
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or (math.isfinite(v) and abs(v) >= 1000):
        return f"{v:,.0f}"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4g}"


def write_sweep_table(sweep_dir: Path, runs_dir: Path) -> Path | None:
    """Collect the summaries of a sweep's jobs (``<runs_dir>/<sweep id>-<n>``) into results.md/json."""
    rows = []
    for path in sorted(runs_dir.glob(f"{sweep_dir.name}-*/summary.json"), key=_job_number):
        s = read_summary(path)
        if s is None:
            continue
        rows.append(
            {
                "run_id": s.get("run_id"),
                "overrides": " ".join(s.get("overrides") or []),
                "metric": s.get("optimized_metric"),
                "value": s.get("metric_end"),
                "global_step": s.get("global_step"),
                "status": s.get("status"),
            }
        )
    if not rows:
        return None
    out = sweep_dir / "results.md"
    lines = [
        "| run_id | overrides | metric | value at final step | step | status |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['run_id']} | {r['overrides']} | {r['metric']} | {fmt_number(r['value'])} | {r['global_step']} "
        f"| {r['status']} |"
        for r in rows
    ]
    atomic_write_text(out, "\n".join(lines) + "\n")
    atomic_write_text(sweep_dir / "results.json", json.dumps(rows, indent=2) + "\n")
    return out


def _job_number(path: Path) -> int:
    tail = path.parent.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def format_train_summary(s: dict[str, Any]) -> str:
    """The block ``moe-swarm-train`` prints at the end of a run."""
    params = s.get("params") or {}
    tput = s.get("tokens_per_s")
    return "\n".join(
        [
            "",
            f"== moe-swarm run {s['run_id']}: {s['status']} after {s['global_step']} steps "
            f"({fmt_number(s['wall_seconds'])} s)",
            f"   parameters: {params.get('total', 0):,} total, {params.get('active', 0):,} active per token",
            f"   {s['optimized_metric']}: {fmt_number(s.get('metric_start'))} at start -> "
            f"{fmt_number(s.get('metric_end'))} at step {s['global_step']}",
            f"   throughput: {fmt_number(round(tput) if tput else None)} tokens/s; "
            f"load max/mean: {fmt_number(s.get('load_max_over_mean'))}",
            f"   checkpoint: {s['checkpoint']}",
            f"   logs: {', '.join(s.get('logs') or []) or '-'}   plots: {s.get('plots') or '-'}",
            f"   summary: {s['run_dir']}/summary.json",
            "",
        ]
    )
