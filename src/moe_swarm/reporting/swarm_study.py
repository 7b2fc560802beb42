"""Combine step-level swarm evaluations of several base-model seeds into one study table.

    python -m moe_swarm.reporting.swarm_study runs/study-mul-s1/swarm_eval runs/study-mul-s2/swarm_eval ...

Each argument is a ``moe-swarm-swarm-eval mode=steps`` output folder (its ``results.json``). Runs are
grouped by task family; within a family every run is one seed. For the largest N, the primary
comparisons (step swarm - greedy, step swarm - independent + majority at equal forward passes and, where
the runs have it, at equal FLOPs) get a two-level bootstrap CI (seeds, then problems within a seed) and
Holm-adjusted p-values over them; step swarm - independent + checker and the selector vote (where run)
are reported alongside, with the selection gap (coverage minus each vote's EM; the share of the
plurality vote's gap the checker vote and the selector close), the checker's AUROC where the plurality
is wrong, and which of the issue's goals each family meets (``--agents N`` picks another N).

``--val DIR ...`` adds the vote chosen on validation: for each test run, the validation evaluation of the
same checkpoint (``split=val``) names the vote with the highest EM (checker, selector, plurality; ties to
the earlier), and that vote's test records become ``step_swarm_val_chosen``, compared with greedy and the
FLOP-matched control. Writes ``study.md`` and ``study.json`` next to the first run's parent folder, or
to ``--out``.
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
    ("step_swarm_val_chosen - greedy", "step_swarm_val_chosen", "greedy"),
    (
        "step_swarm_val_chosen - independent_majority_at_flops",
        "step_swarm_val_chosen",
        "independent_majority_at_flops",
    ),
)
PRIMARY = COMPARISONS[:3]
# the methods whose mean EM over seeds the study reports (those every run of a family has)
MEAN_METHODS = ("greedy", "step_swarm", "independent_majority", "independent_checker")
MEAN_METHODS += ("independent_majority_at_flops", "step_swarm_selector", "step_swarm_plurality", "coverage")
MEAN_METHODS += ("step_swarm_val_chosen",)
VOTES = ("step_swarm", "step_swarm_selector", "step_swarm_plurality")  # a validation tie goes to the earlier


def _em(report: dict, key: str) -> float:
    col = report["step_level"]["per_problem"][key]
    return sum(col) / len(col)


def choose_vote(test: dict, val_reports: list[dict], n: int) -> dict:
    """The vote with the highest EM at N = ``n`` on the validation evaluation of ``test``'s checkpoint,
    among the votes both evaluations ran."""
    same = [v for v in val_reports if v["checkpoint"] == test["checkpoint"]]
    if not same:
        raise ValueError(
            f"no --val evaluation of {test['checkpoint']}: evaluate it with split=val (moe-swarm-swarm-eval "
            f"checkpoint={test['checkpoint']} mode=steps split=val ...) and pass its folder to --val"
        )
    val = same[0]
    if val["split"] != "val":
        raise ValueError(f"the --val evaluation of {test['checkpoint']} is split={val['split']}, not val")
    both = [m for m in VOTES if all(f"{m}@{n}" in r["step_level"]["per_problem"] for r in (val, test))]
    if not both:
        raise ValueError(f"the test and --val evaluations of {test['checkpoint']} share no vote at N={n}")
    em = {m: _em(val, f"{m}@{n}") for m in both}  # only votes the test run can apply
    chosen = max(em, key=lambda m: (em[m], -VOTES.index(m)))
    return {"checkpoint": test["checkpoint"], "val_em": em, "val_problems": val["n_test"], "chosen": chosen}


def study(
    reports: list[dict], samples: int = 2000, agents: int | None = None, val_reports: list[dict] | None = None
) -> dict:
    """Per family: the seeds' mean EM of each method and the two-level bootstrap comparisons at N =
    ``agents`` (None: the largest N every run of the family has), the selection gap and the checker's
    ranking where the plurality is wrong, and the issue's goals met or missed. With ``val_reports``, also
    the vote each run's validation evaluation chose (``step_swarm_val_chosen``)."""
    families: dict[str, list[dict]] = {}
    for r in reports:
        families.setdefault(r["task"]["name"], []).append(r)
    out = {}
    for fam, runs in families.items():
        counts = [
            {int(k.rsplit("@", 1)[1]) for k in r["step_level"]["per_problem"] if "@" in k} for r in runs
        ]
        common = set.intersection(*counts)
        if agents is not None and agents not in common:
            raise ValueError(f"{fam}: N={agents} is not in every run (they share N in {sorted(common)})")
        n = agents if agents is not None else max(common)
        choices = [choose_vote(r, val_reports, n) for r in runs] if val_reports is not None else None
        pick = {id(r): c["chosen"] for r, c in zip(runs, choices or [])}

        def vec(r: dict, method: str, n: int = n, pick: dict = pick) -> list[float]:
            pp = r["step_level"]["per_problem"]
            if method == "step_swarm_val_chosen":
                method = pick[id(r)]
            return pp["greedy"] if method == "greedy" else pp[f"{method}@{n}"]

        def has(method: str, n: int = n, runs: list[dict] = runs, pick: dict = pick) -> bool:
            if method == "step_swarm_val_chosen":
                return bool(pick)
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
            m: sum(sum(vec(r, m)) / len(vec(r, m)) for r in runs) / len(runs) for m in MEAN_METHODS if has(m)
        }
        gap = selection_gap(means)
        auc = [
            r["step_level"]["ranking"].get(str(n), {}).get("checker", {}).get("auc_vote_wrong") for r in runs
        ]
        out[fam] = {
            "seeds": len(runs),
            "agents": n,
            "means": means,
            "comparisons": rows,
            "selection_gap": gap,
            "checker_auc_vote_wrong": auc,
            "goals": goals(rows, gap, auc),
            **({"val_chosen": choices} if choices is not None else {}),
        }
    return out


def selection_gap(means: dict[str, float]) -> dict[str, float] | None:
    """Coverage (a right answer among the independent samples at the budget) minus each vote's EM, and
    the share of the plurality vote's gap that the checker vote and the selector close."""
    if "coverage" not in means or "step_swarm_plurality" not in means:
        return None
    base = means["coverage"] - means["step_swarm_plurality"]
    out = {"plurality_gap": base}
    for m in ("step_swarm", "step_swarm_selector"):
        if m in means:
            out[f"{m}_gap"] = means["coverage"] - means[m]
            out[f"{m}_closed"] = (
                (means[m] - means["step_swarm_plurality"]) / base if base > 0 else float("nan")
            )
    return out


def goals(rows: list[dict], gap: dict[str, float] | None, auc: list) -> dict[str, bool | None]:
    """The issue's goals for one family from its comparisons, its ``selection_gap`` and its checker's
    AUROC on vote-wrong steps per seed (None where the runs lack what a goal needs)."""
    by = {r["comparison"]: r for r in rows}

    def above(name: str, margin: float) -> bool | None:
        r = by.get(name)
        return None if r is None else bool(r["diff"] >= margin and r["low"] > 0)

    aucs = [a for a in auc if isinstance(a, (int, float))]
    return {
        "swarm_minus_greedy_ge_5": above("step_swarm - greedy", 0.05),
        "swarm_minus_flop_matched_majority_ge_3": above("step_swarm - independent_majority_at_flops", 0.03),
        "third_of_selection_gap_closed": None if gap is None else bool(gap["step_swarm_closed"] >= 1 / 3),
        "checker_auc_vote_wrong_ge_0.75": bool(sum(aucs) / len(aucs) >= 0.75) if aucs else None,
    }


def markdown(result: dict) -> str:
    lines = [
        "| family | seeds | N | greedy | step swarm | indep. + majority | indep. + checker | comparison | Δ EM [CI] | p (Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fam, f in result.items():
        m = f["means"]
        for c in f["comparisons"]:
            p = f"{c['p_holm']:.3f}" if "p_holm" in c else "—"
            em = " | ".join(
                "—" if k not in m else f"{100 * m[k]:.1f}"
                for k in ("greedy", "step_swarm", "independent_majority", "independent_checker")
            )
            lines.append(
                f"| {fam} | {f['seeds']} | {f['agents']} | {em} | {c['comparison']} | {_ci(c)} | {p} |"
            )
    lines += [
        "",
        "| family | coverage | plurality vote | gap closed: checker vote | gap closed: selector | checker AUROC vote-wrong (per seed) | goals met |",
        "|---|---|---|---|---|---|---|",
    ]
    for fam, f in result.items():
        m, g = f["means"], f.get("selection_gap")

        def pct(key: str, d: dict | None = m) -> str:
            return "—" if d is None or key not in d else f"{100 * d[key]:.1f}"

        aucs = ", ".join("—" if a is None else f"{a:.3f}" for a in f["checker_auc_vote_wrong"])
        met = ", ".join(k for k, v in f["goals"].items() if v) or "none"
        lines.append(
            f"| {fam} | {pct('coverage')} | {pct('step_swarm_plurality')} | {pct('step_swarm_closed', g)}% "
            f"| {pct('step_swarm_selector_closed', g)}% | {aucs} | {met} |"
        )
    chosen = [(fam, c) for fam, f in result.items() for c in f.get("val_chosen", [])]
    if chosen:
        lines += [
            "",
            "| family | checkpoint | val EM: checker / selector / plurality | vote chosen on validation |",
            "|---|---|---|---|",
        ]
        for fam, c in chosen:
            ems = " / ".join("—" if m not in c["val_em"] else f"{100 * c['val_em'][m]:.1f}" for m in VOTES)
            lines.append(f"| {fam} | {c['checkpoint']} | {ems} | {c['chosen']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="moe-swarm-swarm-eval mode=steps output folders")
    parser.add_argument("--out", type=Path, default=None, help="folder for study.md / study.json")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--agents", type=int, default=None, help="the N compared (default: the largest)")
    parser.add_argument(
        "--val", nargs="+", type=Path, default=None, help="split=val evaluations of the same checkpoints"
    )
    args = parser.parse_args()
    reports, val_reports = _read(args.runs), (_read(args.val) if args.val else None)
    try:
        result = study(reports, args.samples, args.agents, val_reports)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    out = args.out or args.runs[0].parent.parent
    text = markdown(result)
    atomic_write_text(out / "study.json", json.dumps(result, indent=2))
    atomic_write_text(out / "study.md", text)
    print(text, f"written to {out}", sep="\n")


def _read(folders: list[Path]) -> list[dict]:
    reports = []
    for folder in folders:
        path = folder / "results.json"
        if not path.is_file():
            raise SystemExit(
                f"{path} does not exist: pass folders written by moe-swarm-swarm-eval mode=steps"
            )
        reports.append(json.loads(path.read_text()))
    return reports


if __name__ == "__main__":
    main()
