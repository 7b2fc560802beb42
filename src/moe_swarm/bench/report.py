"""results.md: the run's rows as markdown tables, with the goals and what was skipped."""

from __future__ import annotations

from collections import Counter

from moe_swarm.bench.goals import check_goals
from moe_swarm.bench.machine import CpuInfo
from moe_swarm.bench.results import Row


def fmt(value: float) -> str:
    """Four significant digits, without scientific notation for everyday magnitudes."""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def goals_markdown(rows: list[Row]) -> str:
    lines = ["| goal | status | measured |", "|---|---|---|"]
    for g in check_goals(rows):
        measured = ", ".join(f"{case}: {fmt(v)}" for case, v in g.measured) or "—"
        lines.append(f"| {g.goal.description} ({g.goal.op} {fmt(g.goal.target)}) | {g.status} | {measured} |")
    return "\n".join(lines)


def rows_markdown(rows: list[Row]) -> str:
    lines = [
        "| metric | value | unit | reference | ratio | note |",
        "|---|---:|---|---|---:|---|",
    ]
    for r in rows:
        ref = r.reference.split("/", 1)[-1] if r.reference.startswith(r.suite + "/") else r.reference
        lines.append(
            f"| {r.metric.split('/', 1)[1]} | {fmt(r.value)} | {r.unit} | {ref} | {fmt(r.ratio)} | {r.note} |"
        )
    return "\n".join(lines)


def machine_lines(meta: dict) -> list[str]:
    """The CPU line of the header and, where bf16 CPU cases were left out, why."""
    cpu = CpuInfo(**meta["cpu"])
    out = [f"- CPU: {cpu.describe()}"]
    if meta["device"] == "cpu" and not cpu.native_bf16:
        out.append(f"- bf16 and bf16-mixed CPU cases are left out: {cpu.bf16_skip_reason()}")
    return out


def not_run_lines(meta: dict) -> list[str]:
    """The cases a ``--max-minutes`` budget left out, if any."""
    missing = meta["missing_cases"]
    if not missing:
        return []
    return [
        "",
        "## Not run",
        "",
        f"The time budget (`--max-minutes {meta['max_minutes']:g}`) was spent before these "
        f"{len(missing)} of {len(meta['cases'])} cases started:",
        "",
        *[f"- {what}" for what in missing],
    ]


def results_markdown(rows: list[Row], meta: dict, problems: list[dict], plots: list[str]) -> str:
    out = [
        f"# moe-swarm benchmarks, {meta['timestamp']}",
        "",
        f"- command: `{meta['command']}`",
        f"- torch {meta['torch_version']}, device {meta['device']} ({meta['device_name']}), "
        f"{meta['threads']} intra-op thread(s), git commit {meta['git_commit']}",
        *machine_lines(meta),
        f"- quick: {'yes' if meta['quick'] else 'no'}; repeats: {meta['repeats'] or 'suite default'}; "
        "values are medians over the repeats, candidates interleaved within each repeat",
        "- ratio = value / reference value, both measured side by side in this run; "
        "rows in unit `x` (speedups, slowdowns) are the median over repeats of the per-repeat ratio "
        "of the two timings",
        "",
        "## Goals",
        "",
        goals_markdown(rows),
        *not_run_lines(meta),
    ]
    for suite in meta["suites"]:
        suite_rows = [r for r in rows if r.suite == suite]
        suite_problems = [p for p in problems if p["suite"] == suite and p["status"] != "not run"]
        if not suite_rows and not suite_problems:
            continue
        out += ["", f"## {suite}", ""]
        if suite_rows:
            out += [rows_markdown(suite_rows), ""]
            cfgs = {str(r.config) for r in suite_rows}
            if len(cfgs) <= 4:
                out += [f"config: `{c}`" for c in sorted(cfgs)] + [""]
        if f"{suite}.png" in plots:
            out += [f"![{suite}]({suite}.png)", ""]
        for p in suite_problems:
            out.append(f"- **{p['status']}** {p['what']}: {p['reason']}")
    return "\n".join(out).rstrip() + "\n"


def console_summary(rows: list[Row], meta: dict, problems: list[dict]) -> str:
    """What ``moe-swarm-bench run`` prints when done: machine, rows per suite, goals, cases not run."""
    out = [
        f"torch {meta['torch_version']} | {meta['device']} ({meta['device_name']}) | {meta['threads']} thread(s)",
        f"CPU: {CpuInfo(**meta['cpu']).describe()}",
    ]
    for suite in meta["suites"]:
        status = f"{sum(r.suite == suite for r in rows)} rows in {meta['suite_seconds'].get(suite, 0):.1f} s"
        for p in problems:
            if p["suite"] == suite and p["what"] == suite:
                status = f"{p['status']}: {p['reason'].splitlines()[0]}"
        counts = Counter(p["status"] for p in problems if p["suite"] == suite and p["what"] != suite)
        extra = ", ".join(f"{k} {counts[k]}" for k in ("failed", "not run") if counts[k])
        out.append(f"  {suite:<11} {status}" + (f" ({extra})" if extra else ""))
    if meta["missing_cases"]:
        out.append(
            f"  time budget of {meta['max_minutes']:g} min spent; not run: {', '.join(meta['missing_cases'])}"
        )
    for g in check_goals(rows):
        if g.status != "not measured":
            values = ", ".join(f"{case} {fmt(v)}" for case, v in g.measured)
            out.append(f"  goal {g.status:<8} {g.goal.description}: {values}")
    return "\n".join(out)
