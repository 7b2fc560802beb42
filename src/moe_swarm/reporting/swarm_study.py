"""Combine step-level swarm evaluations of several base-model seeds into one study table.

    python -m moe_swarm.reporting.swarm_study runs/study-mul-s1/swarm_eval runs/study-mul-s2/swarm_eval ...

Each argument is a ``moe-swarm-swarm-eval mode=steps`` output folder (its ``results.json``). Runs are
grouped by task family; within a family every run is one seed. For the largest N, the primary
comparisons (step swarm - greedy, step swarm - independent + majority at equal forward passes and, where
the runs have it, at equal FLOPs) get a two-level bootstrap CI (seeds, then problems within a seed) and
Holm-adjusted p-values over them; step swarm - independent + checker and the selector vote (where run)
are reported alongside. Writes ``study.md`` and ``study.json`` next to the first
run's parent folder, or to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moe_swarm.atomic import atomic_write_text
from moe_swarm.reporting.swarm import _ci
from moe_swarm.swarm.statistics import holm_adjust, two_level_bootstrap_ci

COMPARISONS = (  # the primary ones first; a comparison runs where every run of a family has both columns
    ("step_swarm - greedy", "step_swarm", "greedy"),
    ("step_swarm - independent_majority", "step_swarm", "independent_majority"),
    ("step_swarm - independent_majority_at_flops", "step_swarm", "independent_majority_at_flops"),
    ("step_swarm - independent_checker", "step_swarm", "independent_checker"),
    ("step_swarm_selector - greedy", "step_swarm_selector", "greedy"),
    (
        "step_swarm_selector - independent_majority_at_flops",
        "step_swarm_selector",
        "independent_majority_at_flops",
    ),
)
PRIMARY = COMPARISONS[:3]


def study(reports: list[dict], samples: int = 2000) -> dict:
    """Per family: the seeds' mean EM of each method and the two-level bootstrap comparisons at the largest N."""
    families: dict[str, list[dict]] = {}
    for r in reports:
        families.setdefault(r["task"]["name"], []).append(r)
    out = {}
    for fam, runs in families.items():
        n = min(
            max(int(k.rsplit("@", 1)[1]) for k in r["step_level"]["per_problem"] if "@" in k) for r in runs
        )

        def vec(r: dict, method: str, n: int = n) -> list[float]:
            pp = r["step_level"]["per_problem"]
            return pp["greedy"] if method == "greedy" else pp[f"{method}@{n}"]

        def has(method: str, n: int = n, runs: list[dict] = runs) -> bool:
            return all(method == "greedy" or f"{method}@{n}" in r["step_level"]["per_problem"] for r in runs)

        rows = []
        for name, a, b in COMPARISONS:
            if has(a) and has(b):
                ci = two_level_bootstrap_ci(
                    [vec(r, a) for r in runs], [vec(r, b) for r in runs], samples=samples
                )
                rows.append({"comparison": name, "agents": n, **ci})
        primary = [row for row in rows if row["comparison"] in {c[0] for c in PRIMARY}]
        for row, p in zip(primary, holm_adjust([row["p_value"] for row in primary])):
            row["p_holm"] = p
        means = {
            m: sum(sum(vec(r, m)) / len(vec(r, m)) for r in runs) / len(runs)
            for m in ("greedy", "step_swarm", "independent_majority", "independent_checker")
        }
        out[fam] = {"seeds": len(runs), "agents": n, "means": means, "comparisons": rows}
    return out


def markdown(result: dict) -> str:
    lines = [
        "| family | seeds | N | greedy | step swarm | indep. + majority | indep. + checker | comparison | Δ EM [CI] | p (Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fam, f in result.items():
        m = f["means"]
        for c in f["comparisons"]:
            p = f"{c['p_holm']:.3f}" if "p_holm" in c else "—"
            lines.append(
                f"| {fam} | {f['seeds']} | {f['agents']} | {100 * m['greedy']:.1f} | {100 * m['step_swarm']:.1f} "
                f"| {100 * m['independent_majority']:.1f} | {100 * m['independent_checker']:.1f} "
                f"| {c['comparison']} | {_ci(c)} | {p} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="moe-swarm-swarm-eval mode=steps output folders")
    parser.add_argument("--out", type=Path, default=None, help="folder for study.md / study.json")
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    reports = []
    for folder in args.runs:
        path = folder / "results.json"
        if not path.is_file():
            raise SystemExit(
                f"{path} does not exist: pass folders written by moe-swarm-swarm-eval mode=steps"
            )
        reports.append(json.loads(path.read_text()))
    result = study(reports, args.samples)
    out = args.out or args.runs[0].parent.parent
    text = markdown(result)
    atomic_write_text(out / "study.json", json.dumps(result, indent=2))
    atomic_write_text(out / "study.md", text)
    print(text, f"written to {out}", sep="\n")


if __name__ == "__main__":
    main()
