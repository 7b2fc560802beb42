"""results.md: the run's rows as markdown tables, with the goals and what was skipped."""

from __future__ import annotations

from moe_swarm.bench.goals import check_goals
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


def results_markdown(rows: list[Row], meta: dict, problems: list[dict], plots: list[str]) -> str:
    out = [
        f"# moe-swarm benchmarks, {meta['timestamp']}",
        "",
        f"- command: `{meta['command']}`",
        f"- torch {meta['torch_version']}, device {meta['device']} ({meta['device_name']}), "
        f"{meta['threads']} intra-op thread(s), git commit {meta['git_commit']}",
        f"- quick: {'yes' if meta['quick'] else 'no'}; repeats: {meta['repeats'] or 'suite default'}; "
        "values are medians over the repeats, candidates interleaved within each repeat",
        "- ratio = value / reference value, both measured side by side in this run; "
        "rows in unit `x` (speedups, slowdowns) are the median over repeats of the per-repeat ratio "
        "of the two timings",
        "",
        "## Goals",
        "",
        goals_markdown(rows),
    ]
    for suite in meta["suites"]:
        suite_rows = [r for r in rows if r.suite == suite]
        suite_problems = [p for p in problems if p["suite"] == suite]
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
