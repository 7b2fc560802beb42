"""Swarm evaluation reports: ``results.json``, ``results.md`` (markdown tables) and a plot of exact match
vs forward passes. Reads the report dict built by the harness (``moe_swarm.swarm.evaluation``) for
either vote unit; computes nothing itself. What differs between the units (which columns, which
series) is a ``LevelView``; the markdown and the plot are one path for both."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_swarm.store.layout import RunLayout
from moe_swarm.swarm.evaluation import find_comparison


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.3f}"


def _ci(c: dict | None) -> str:
    if c is None:
        return "—"
    return f"{100 * c['diff']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]"


def _fp(row: dict, fp: str, flops: str) -> str:
    return f"{row[fp]:.1f} ({row[flops] / 1e9:.3f})"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _header(report: dict) -> list[str]:
    task = report["task"]
    args = ", ".join(f"{k}={v}" for k, v in task["kwargs"].items())
    return [
        f"# Swarm evaluation: {task['name']}({args}), split {report['split']}, {report['n_test']} problems "
        f"(problem_seed {report['problem_seed']})",
        "",
        f"Checkpoint `{report['checkpoint']}` (step {report['global_step']}); {report['threads']} threads on "
        f"{report['device']}; {report.get('seconds', '?')} s.",
    ]


# (label, forward passes, exact match, line style, matplotlib keywords) of one line of the plot
Series = tuple[str, list[float], list[float], str, dict[str, Any]]


@dataclass(frozen=True)
class LevelView:
    """What one vote unit's report shows: its config and legend, each bucket's heading, grid
    columns and extras, the comparison labels, the text after the buckets, and the plot's series."""

    title: str  # "Answer-level" / "Step-level"
    config_key: str  # the level's swarm config in the report
    scorer: tuple[str, str]  # (what the scorer is called, the report key saying whether there was one)
    legend: str  # what the columns mean; {ci} = the bootstrap level
    heading: Callable[[dict], str]
    grid: list[tuple[str, str | Callable[[dict, dict], str]]]  # (header, key of a % or cell(row, bucket))
    grid_extra: Callable[[dict], list[str]]  # lines after a grid row
    after_grid: Callable[[dict, dict], list[str]]  # (bucket, level) -> lines
    at: tuple[tuple[str, str], ...]  # (comparison key, column header)
    holm: bool
    closing: Callable[[dict], list[str]]
    series: Callable[[dict], list[Series]]
    greedy: tuple[str, str]  # the greedy summary's (forward passes, EM) keys
    annotate: bool  # label each swarm point with its N
    xlabel: str
    plot_file: str


# ------------------------------------------------------------------------------------ answer level
ANSWER_LEGEND = (
    "EM = exact match in %. FP = agent-forward-passes per problem. Grid cells run the swarm with N agents "
    "per round and R refinement rounds; majority / score-weighted / value columns re-vote the same "
    "records. pass@N: a first-round record is right (true pass@N); coverage: a record of any round is "
    "right. 'indep. + majority' = independent agents + plain majority vote given each problem the "
    "swarm's own forward passes; 'indep. rescored' re-votes those agents with the swarm's score weights. "
    "Differences in EM points with paired bootstrap {ci} CIs."
)


def _vs(name: str) -> Callable[[dict, dict], str]:
    def cell(row: dict, b: dict) -> str:
        return _ci(find_comparison(b["comparisons"], name, agents=row["agents"], rounds=row["rounds"]))

    return cell


def _answer_after_grid(b: dict, level: dict) -> list[str]:
    ref = level["reference"]
    cell = next(x for x in b["grid"] if x["agents"] == ref["agents"] and x["rounds"] == ref["rounds"])
    lines = [
        "",
        f"Scorers ranking the records of one problem (N={ref['agents']}, R={ref['rounds']}; mean AUROC over "
        f"problems with right and wrong records, 0.5 = chance): value head {_num(cell['value_auc_within'])}, "
        f"likelihood {_num(cell['logprob_auc_within'])}.",
    ]
    if b["diversity"]:
        lines += [
            "",
            f"Diversity controls at N={ref['agents']}, R={ref['rounds']} (independent agents get the "
            "default swarm's forward passes):",
            "",
        ]
        headers = ["diversity", "swarm EM", "swarm FP", "single agent", "pass@N", "coverage"]
        rows = [
            [d["diversity"], _pct(d["swarm"]), f"{d['swarm_forward_passes']:.1f}", _pct(d["single_agent"])]
            + [_pct(d["pass_at_n"]), _pct(d["coverage"]), _pct(d["independent_majority"])]
            + [f"{d['independent_forward_passes']:.1f}"]
            for d in b["diversity"]
        ]
        lines += _table([*headers, "indep. + majority EM", "indep. FP"], rows)
    return lines


def _answer_series(b: dict) -> list[Series]:
    import matplotlib.pyplot as plt

    rounds = sorted({row["rounds"] for row in b["grid"]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    out: list[Series] = []
    for i, r in enumerate(rounds):
        rows = [row for row in b["grid"] if row["rounds"] == r]
        style = {"color": colors[i % len(colors)]}
        fp, em = [x["forward_passes"] for x in rows], [x["swarm"] for x in rows]
        out.append((f"swarm, R={r}", fp, em, "o-", style))
        if all("independent_majority" in x for x in rows):
            fp, em = (
                [x["independent_forward_passes"] for x in rows],
                [x["independent_majority"] for x in rows],
            )
            out.append((f"indep. + majority, equal FP (R={r})", fp, em, "s--", {**style, "alpha": 0.6}))
    first = [row for row in b["grid"] if row["rounds"] == rounds[0]]
    fp, em = [x["forward_passes"] for x in first], [x["pass_at_n"] for x in first]
    out.append(("pass@N (oracle)", fp, em, ":", {"color": "grey"}))
    return out


ANSWER_VIEW = LevelView(
    title="Answer-level",
    config_key="swarm_config",
    scorer=("value head", "value_head"),
    legend=ANSWER_LEGEND,
    heading=lambda b: f"greedy EM {_pct(b['greedy']['swarm'])} at {b['greedy']['forward_passes']:.1f} FP",
    grid=[
        ("N", lambda r, b: str(r["agents"])),
        ("R", lambda r, b: str(r["rounds"])),
        ("FP", lambda r, b: f"{r['forward_passes']:.1f}"),
        ("single agent", "single_agent"),
        ("majority", "majority"),
        ("score-weighted", "score_weighted"),
        ("value-weighted", "value_weighted"),
        ("best-of-N (value)", "best_of_n_value"),
        ("best-of-N (likelihood)", "best_of_n_logprob"),
        ("pass@N", "pass_at_n"),
        ("coverage", "coverage"),
        ("swarm", "swarm"),
        ("indep. + majority", "independent_majority"),
        ("indep. rescored", "independent_rescored"),
        ("swarm − indep. + majority", _vs("swarm - independent_majority")),
        ("swarm − greedy", _vs("swarm - greedy")),
    ],
    grid_extra=lambda row: [],
    after_grid=_answer_after_grid,
    at=(("agents", "N"), ("rounds", "R")),
    holm=False,
    closing=lambda level: [],
    series=_answer_series,
    greedy=("forward_passes", "swarm"),
    annotate=False,
    xlabel="agent-forward-passes per problem",
    plot_file="em_vs_forward_passes.png",
)


# ------------------------------------------------------------------------------------ step level
STEP_LEGEND = (
    "EM = exact match of the final answer line in %. FP = forward passes per problem (generator and checker "
    "rows; a prefill counts once), GFLOP per problem in brackets. Controls get, per problem, the step "
    "swarm's own forward passes: 'indep. + majority' = independent full scratchpads + plurality vote over "
    "their answers; 'indep. + checker' = the same budget, each sample also read by the same checker "
    "(charged), vote weighted by the product of its step probabilities; 'best-of-N (checker)' = the sample "
    "with the highest product; pass@N = one of the first N samples is right; coverage = one of all samples "
    "drawn at the budget is right. Differences in EM points with paired bootstrap {ci} CIs over problems; "
    "p (Holm) over the primary comparisons (vs greedy, vs indep. + majority at equal FP and at equal FLOPs)."
)


def _ablation_lines(row: dict) -> list[str]:
    lines = []
    for key, value in row.items():
        if key.startswith("step_swarm_") and not key.endswith(("forward_passes", "_flops")):
            vote = key.removeprefix("step_swarm_")
            lines.append(
                f"|  | {vote} vote: {_pct(value)} | {row[key + '_forward_passes']:.1f} |  |  |  |  |  |  |  |  |"
            )
    return lines


def _flop_matched(b: dict, level: dict) -> list[str]:
    """The controls again with as many samples as fit in the swarm's FLOPs (when the eval ran them)."""
    rows = [r for r in b["grid"] if "independent_majority_at_flops" in r]
    if not rows:
        return []
    lines = [
        "",
        "Matched on FLOPs (the controls draw samples until they use the step swarm's FLOPs per problem; "
        "'FLOP ratio' = step swarm FLOPs / independent + majority FLOPs at equal forward passes):",
        "",
    ]
    headers = ["N", "step swarm", "GFLOP", "FLOP ratio @ equal FP", "indep. + majority @ FLOPs"]
    headers += ["FP (GFLOP)", "indep. + checker @ FLOPs", "best-of-N (checker) @ FLOPs", "FP (GFLOP)"]
    body = []
    for r in rows:
        ratio = r["flops"] / r["independent_flops"] if r.get("independent_flops") else math.nan
        body.append(
            [str(r["agents"]), _pct(r["step_swarm"]), f"{r['flops'] / 1e9:.3f}", _num(ratio)]
            + [_pct(r["independent_majority_at_flops"])]
            + [_fp(r, "independent_at_flops_forward_passes", "independent_at_flops_flops")]
            + [_pct(r.get("independent_checker_at_flops")), _pct(r.get("best_of_n_checker_at_flops"))]
            + [_fp(r, "independent_checker_at_flops_forward_passes", "independent_checker_at_flops_flops")]
        )
    return lines + _table(headers, body)


def _step_closing(level: dict) -> list[str]:
    lines = [
        "",
        "Ranking the proposals of one step (the swarm's own proposals, oracle labels; mean within-group AUROC, "
        "0.5 = chance; 'vote wrong' = groups whose plurality winner is wrong while a right proposal is present):",
        "",
    ]
    rows = [
        [
            n,
            scorer,
            _num(r["auc_within"]),
            str(r["groups"]),
            _num(r["auc_vote_wrong"]),
            str(r["groups_vote_wrong"]),
        ]
        for n, ranking in level["ranking"].items()
        for scorer, r in ranking.items()
    ]
    lines += _table(["N", "scorer", "AUROC within", "groups", "AUROC vote wrong", "groups"], rows)
    sel = level.get("selector")
    if sel and not sel.get("weights"):
        lines += [
            "",
            f"Step selector: not fitted ({sel['problems']} val problems gave no vote with a right and a wrong candidate).",
        ]
    elif sel:
        weights = ", ".join(f"{k} {v:+.2f}" for k, v in sel["weights"].items())
        lines += [
            "",
            f"Step selector (the 'selector vote' rows): fitted on the swarm's proposals for {sel['problems']} "
            f"{sel['split']} problems (seed {sel['seed']}; {sel['choice_groups']} of {sel['groups']} vote groups "
            f"hold a right and a wrong candidate); on those groups it picks a right candidate "
            f"{_pct(sel['accuracy_selector_in_sample'])}% of the time (in sample) vs the plurality's "
            f"{_pct(sel['accuracy_plurality'])}%. Weights on standardised features: {weights}.",
        ]
    return lines


def _step_series(b: dict) -> list[Series]:
    rows = b["grid"]
    out: list[Series] = []
    for label, fp, em, style in (
        ("step swarm", "forward_passes", "step_swarm", "o-"),
        ("indep. + majority", "independent_forward_passes", "independent_majority", "s--"),
        ("indep. + checker", "independent_checker_forward_passes", "independent_checker", "^--"),
        ("best-of-N (checker)", "independent_checker_forward_passes", "best_of_n_checker", "v:"),
    ):
        pts = [(r[fp], r[em]) for r in rows if not math.isnan(r[em])]
        if pts:
            out.append((label, [p[0] for p in pts], [p[1] for p in pts], style, {}))
    return out


STEP_VIEW = LevelView(
    title="Step-level",
    config_key="steps_config",
    scorer=("learned checker", "checker"),
    legend=STEP_LEGEND,
    heading=lambda b: (
        f"greedy EM {_pct(b['greedy']['greedy'])} at {b['greedy']['forward_passes']:.1f} FP "
        f"({b['greedy']['flops'] / 1e9:.3f} GFLOP)"
    ),
    grid=[
        ("N", lambda r, b: str(r["agents"])),
        ("step swarm", "step_swarm"),
        ("FP (GFLOP)", lambda r, b: _fp(r, "forward_passes", "flops")),
        ("backtracks", lambda r, b: f"{r['backtracks']:.2f}"),
        ("indep. + majority", "independent_majority"),
        ("FP (GFLOP)", lambda r, b: _fp(r, "independent_forward_passes", "independent_flops")),
        ("indep. + checker", "independent_checker"),
        ("best-of-N (checker)", "best_of_n_checker"),
        (
            "FP (GFLOP)",
            lambda r, b: _fp(r, "independent_checker_forward_passes", "independent_checker_flops"),
        ),
        ("pass@N", "pass_at_n"),
        ("coverage", "coverage"),
    ],
    grid_extra=_ablation_lines,
    after_grid=_flop_matched,
    at=(("agents", "N"),),
    holm=True,
    closing=_step_closing,
    series=_step_series,
    greedy=("forward_passes", "greedy"),
    annotate=True,
    xlabel="forward passes per problem (generator + checker)",
    plot_file="steps_em_vs_forward_passes.png",
)

VIEWS = {"answer_level": ANSWER_VIEW, "step_level": STEP_VIEW}


# ------------------------------------------------------------------------------------ one path for both
def level_markdown(level: dict, view: LevelView) -> list[str]:
    """One vote unit's section: intro, per difficulty the grid, extras and comparisons, closing."""
    scorer, has_scorer = view.scorer
    lines = [
        "",
        f"{view.title} swarm config: `{json.dumps(level[view.config_key])}`; {scorer}: "
        f"{'yes' if level.get(has_scorer) else 'no'}.",
        "",
        view.legend.format(ci=f"{level['bootstrap']['level']:.0%}"),
    ]
    for name, b in level["buckets"].items():
        lines += ["", f"## Difficulty {name} ({b['problems']} problems): {view.heading(b)}", ""]
        lines += _table([h for h, _ in view.grid], [])
        for row in b["grid"]:
            cells = [_pct(row.get(c)) if isinstance(c, str) else c(row, b) for _, c in view.grid]
            lines += ["| " + " | ".join(cells) + " |", *view.grid_extra(row)]
        lines += view.after_grid(b, level)
        headers = [
            "comparison",
            *[h for _, h in view.at],
            "Δ EM points [CI]",
            *(["p (Holm)"] if view.holm else []),
        ]
        rows = []
        for c in b["comparisons"]:
            p = [f"{c['p_holm']:.3f}" if "p_holm" in c else "—"] if view.holm else []
            rows.append([c["comparison"], *[str(c[k]) for k, _ in view.at], _ci(c), *p])
        lines += ["", *_table(headers, rows)]
    return lines + view.closing(level)


def targets_markdown(targets: list[dict]) -> list[str]:
    if not targets:
        return []
    lines = [
        "",
        "## Targets",
        "",
        "A target is met when the measured difference reaches the margin and the whole CI is above 0.",
        "",
    ]
    rows = []
    for t in targets:
        where = t["at"] + (f", difficulty {t['bucket']}" if t.get("bucket") else "")
        note = f" ({t['note']})" if t.get("note") else ""
        rows.append(
            [
                f"{t['target']}{note}",
                where,
                f"{100 * t['measured']:+.1f} pts",
                f"[{100 * t['ci'][0]:+.1f}, {100 * t['ci'][1]:+.1f}]",
                "yes" if t["met"] else "no",
            ]
        )
    return lines + _table(["target", "where", "measured", "CI", "met"], rows)


def _levels(report: dict) -> list[tuple[dict, LevelView]]:
    """Each vote unit's section of ``report`` (answer level: with the run-wide swarm config and head flag)."""
    return [({**report, **report[key]}, view) for key, view in VIEWS.items() if key in report]


def markdown(report: dict) -> str:
    """The whole report as markdown (EM in %, differences in points with their bootstrap CI)."""
    lines = _header(report)
    for level, view in _levels(report):
        lines += level_markdown(level, view)
    lines += targets_markdown(report.get("targets", []))
    return "\n".join(lines) + "\n"


def plot_level(report: dict, level: dict, view: LevelView, path: Path) -> None:
    """Exact match vs forward passes per problem (first difficulty bucket): swarm, controls, greedy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, b = next(iter(level["buckets"].items()))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, xs, ys, style, kwargs in view.series(b):
        ax.plot(xs, [100 * y for y in ys], style, label=label, **kwargs)
    fp, em = view.greedy
    ax.plot([b["greedy"][fp]], [100 * b["greedy"][em]], "k*", markersize=12, label="greedy")
    if view.annotate:
        for r in b["grid"]:
            ax.annotate(f"N={r['agents']}", (r["forward_passes"], 100 * r["step_swarm"]), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(view.xlabel)
    ax.set_ylabel("exact match (%)")
    ax.set_title(f"{report['task']['name']} {name}: {report['n_test']} {report['split']} problems")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def output_dir(checkpoint: str | Path, out_dir: str | Path | None = None) -> Path:
    """``out_dir``, else ``<run dir of the checkpoint>/swarm_eval`` (the folder above ``checkpoints/``)."""
    if out_dir:
        return Path(out_dir)
    return RunLayout.of_checkpoint(Path(checkpoint).resolve()).root / "swarm_eval"


def write_report(report: dict[str, Any], out_dir: Path) -> Path:
    """Write ``results.json``, ``results.md`` and each level's plot into ``out_dir``; returns ``out_dir``."""
    from moe_swarm.atomic import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "results.json", json.dumps(report, indent=2, allow_nan=True))
    atomic_write_text(out_dir / "results.md", markdown(report))
    for level, view in _levels(report):
        plot_level(report, level, view, out_dir / view.plot_file)
    return out_dir
