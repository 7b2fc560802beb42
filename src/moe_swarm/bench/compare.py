"""Compare two results.json files: per (suite, metric, config) the old value, the new one and the change.

A change counts as worse when it moves against ``higher_is_better`` by more than the threshold.
Absolute numbers from different machines, thread counts or loads are not comparable; the meta
lines printed first say whether the two runs match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moe_swarm.bench.report import fmt
from moe_swarm.bench.results import load_results


@dataclass
class Change:
    suite: str
    metric: str
    unit: str
    old: float
    new: float
    higher_is_better: bool

    @property
    def percent(self) -> float:
        return (self.new - self.old) / self.old * 100.0

    def verdict(self, threshold_pct: float) -> str:
        if abs(self.percent) <= threshold_pct:
            return "same"
        improved = (self.percent > 0) == self.higher_is_better
        return "better" if improved else "WORSE"


@dataclass
class Comparison:
    changes: list[Change]
    only_old: list[str]
    only_new: list[str]
    meta_differences: list[str]

    def worse(self, threshold_pct: float) -> list[Change]:
        return [c for c in self.changes if c.verdict(threshold_pct) == "WORSE"]


META_KEYS = ("device", "device_name", "threads", "torch_version", "quick", "git_commit")


def compare_files(old_path: str | Path, new_path: str | Path) -> Comparison:
    old_rows, old_meta = load_results(old_path)
    new_rows, new_meta = load_results(new_path)
    old = {r.key: r for r in old_rows}
    new = {r.key: r for r in new_rows}
    changes = [
        Change(r.suite, r.metric, r.unit, old[k].value, r.value, r.higher_is_better)
        for k, r in new.items()
        if k in old
    ]
    meta_diff = [
        f"{k}: {old_meta.get(k)!r} -> {new_meta.get(k)!r}"
        for k in META_KEYS
        if old_meta.get(k) != new_meta.get(k)
    ]
    old_cap = old_meta.get("cpu", {}).get("capability")  # runs written before issue 24 have no cpu
    new_cap = new_meta.get("cpu", {}).get("capability")
    if old_cap != new_cap:
        meta_diff.append(f"CPU capability: {old_cap!r} -> {new_cap!r}")
    return Comparison(
        changes=changes,
        only_old=[old[k].metric for k in old if k not in new],
        only_new=[new[k].metric for k in new if k not in old],
        meta_differences=meta_diff,
    )


def format_comparison(cmp: Comparison, threshold_pct: float) -> str:
    lines = []
    if cmp.meta_differences:
        lines.append("runs differ in: " + "; ".join(cmp.meta_differences))
        lines.append("(absolute numbers compare only on the same machine and threads; ratios travel better)")
        lines.append("")
    table = [("metric", "unit", "old", "new", "change", "verdict")]
    for c in cmp.changes:
        table.append(
            (c.metric, c.unit, fmt(c.old), fmt(c.new), f"{c.percent:+.1f}%", c.verdict(threshold_pct))
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    if cmp.only_old:
        lines += ["", f"only in the old run ({len(cmp.only_old)}): " + ", ".join(cmp.only_old)]
    if cmp.only_new:
        lines += ["", f"only in the new run ({len(cmp.only_new)}): " + ", ".join(cmp.only_new)]
    worse = cmp.worse(threshold_pct)
    lines += [
        "",
        f"{len(cmp.changes)} matching metrics; {len(worse)} worse by more than {threshold_pct:g}%"
        + (": " + ", ".join(c.metric for c in worse) if worse else ""),
    ]
    return "\n".join(lines)
