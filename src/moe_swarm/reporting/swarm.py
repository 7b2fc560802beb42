"""Swarm evaluation reports: ``results.json``, ``results.md`` (markdown tables) and a plot of exact match
vs forward passes. Reads the report dicts built by ``moe_swarm.swarm.evaluation`` (and the step-level
evaluation); computes nothing itself."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from moe_swarm.layout import RunLayout
from moe_swarm.swarm.evaluation import find_comparison


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.3f}"


def _ci(c: dict | None) -> str:
    if c is None:
        return "—"
    return f"{100 * c['diff']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]"


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


def answer_level_markdown(report: dict) -> list[str]:
    """The answer-level grid, scorer AUROCs, diversity controls and comparisons."""
    level = f"{report['bootstrap']['level']:.0%}"
    lines = [
        "",
        f"Answer-level swarm config: `{json.dumps(report['swarm_config'])}`; value head: "
        f"{'yes' if report.get('value_head') else 'no'}.",
        "",
        "EM = exact match in %. FP = agent-forward-passes per problem. Grid cells run the swarm with N agents "
        "per round and R refinement rounds; majority / score-weighted / value columns re-vote the same "
        "records. pass@N: a first-round record is right (true pass@N); coverage: a record of any round is "
        "right. 'indep. + majority' = independent agents + plain majority vote given each problem the "
        "swarm's own forward passes; 'indep. rescored' re-votes those agents with the swarm's score weights. "
        f"Differences in EM points with paired bootstrap {level} CIs.",
    ]
    ref = report["reference"]
    for name, b in report["buckets"].items():
        lines += [
            "",
            f"## Difficulty {name} ({b['problems']} problems): greedy EM {_pct(b['greedy']['swarm'])} "
            f"at {b['greedy']['forward_passes']:.1f} FP",
            "",
            "| N | R | FP | single agent | majority | score-weighted | value-weighted | best-of-N (value) "
            "| best-of-N (likelihood) | pass@N | coverage | swarm | indep. + majority | indep. rescored "
            "| swarm − indep. + majority | swarm − greedy |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in b["grid"]:
            at = {"agents": row["agents"], "rounds": row["rounds"]}
            vs_ind = find_comparison(b["comparisons"], "swarm - independent_majority", **at)
            vs_greedy = find_comparison(b["comparisons"], "swarm - greedy", **at)
            lines.append(
                f"| {row['agents']} | {row['rounds']} | {row['forward_passes']:.1f} | {_pct(row['single_agent'])} "
                f"| {_pct(row['majority'])} | {_pct(row['score_weighted'])} | {_pct(row['value_weighted'])} "
                f"| {_pct(row['best_of_n_value'])} | {_pct(row['best_of_n_logprob'])} | {_pct(row['pass_at_n'])} "
                f"| {_pct(row['coverage'])} | {_pct(row['swarm'])} | {_pct(row.get('independent_majority'))} "
                f"| {_pct(row.get('independent_rescored'))} | {_ci(vs_ind)} | {_ci(vs_greedy)} |"
            )
        cell = next(x for x in b["grid"] if x["agents"] == ref["agents"] and x["rounds"] == ref["rounds"])
        lines += [
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
                "| diversity | swarm EM | swarm FP | single agent | pass@N | coverage | indep. + majority EM "
                "| indep. FP |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for d in b["diversity"]:
                lines.append(
                    f"| {d['diversity']} | {_pct(d['swarm'])} | {d['swarm_forward_passes']:.1f} "
                    f"| {_pct(d['single_agent'])} | {_pct(d['pass_at_n'])} | {_pct(d['coverage'])} "
                    f"| {_pct(d['independent_majority'])} | {d['independent_forward_passes']:.1f} |"
                )
        lines += ["", "| comparison | N | R | Δ EM points [CI] |", "|---|---|---|---|"]
        for c in b["comparisons"]:
            lines.append(f"| {c['comparison']} | {c['agents']} | {c['rounds']} | {_ci(c)} |")
    return lines


def step_level_markdown(level: dict) -> list[str]:
    """The step swarm at each N against greedy and the compute-matched controls, and the checker's ranking."""
    lv = f"{level['bootstrap']['level']:.0%}"
    lines = [
        "",
        f"Step-level swarm config: `{json.dumps(level['steps_config'])}`; learned checker: "
        f"{'yes' if level['checker'] else 'no'}.",
        "",
        "EM = exact match of the final answer line in %. FP = forward passes per problem (generator and checker "
        "rows; a prefill counts once), GFLOP per problem in brackets. Controls get, per problem, the step "
        "swarm's own forward passes: 'indep. + majority' = independent full scratchpads + plurality vote over "
        "their answers; 'indep. + checker' = the same budget, each sample also read by the same checker "
        "(charged), vote weighted by the product of its step probabilities; 'best-of-N (checker)' = the sample "
        "with the highest product; pass@N = one of the first N samples is right; coverage = one of all samples "
        f"drawn at the budget is right. Differences in EM points with paired bootstrap {lv} CIs over problems; "
        "p (Holm) over the two primary comparisons.",
    ]
    for name, b in level["buckets"].items():
        g = b["greedy"]
        lines += [
            "",
            f"## Difficulty {name} ({b['problems']} problems): greedy EM {_pct(g['greedy'])} at "
            f"{g['forward_passes']:.1f} FP ({g['flops'] / 1e9:.3f} GFLOP)",
            "",
            "| N | step swarm | FP (GFLOP) | backtracks | indep. + majority | FP (GFLOP) | indep. + checker "
            "| best-of-N (checker) | FP (GFLOP) | pass@N | coverage |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in b["grid"]:
            lines.append(
                f"| {row['agents']} | {_pct(row['step_swarm'])} | {row['forward_passes']:.1f} ({row['flops'] / 1e9:.3f}) "
                f"| {row['backtracks']:.2f} | {_pct(row['independent_majority'])} "
                f"| {row['independent_forward_passes']:.1f} ({row['independent_flops'] / 1e9:.3f}) "
                f"| {_pct(row['independent_checker'])} | {_pct(row['best_of_n_checker'])} "
                f"| {row['independent_checker_forward_passes']:.1f} ({row['independent_checker_flops'] / 1e9:.3f}) "
                f"| {_pct(row['pass_at_n'])} | {_pct(row['coverage'])} |"
            )
            for key, value in row.items():
                if key.startswith("step_swarm_") and not key.endswith("forward_passes"):
                    vote = key.removeprefix("step_swarm_")
                    lines.append(
                        f"|  | {vote} vote: {_pct(value)} | {row[key + '_forward_passes']:.1f} |  |  |  |  |  |  |  |  |"
                    )
        lines += ["", "| comparison | N | Δ EM points [CI] | p (Holm) |", "|---|---|---|---|"]
        for c in b["comparisons"]:
            p = f"{c['p_holm']:.3f}" if "p_holm" in c else "—"
            lines.append(f"| {c['comparison']} | {c['agents']} | {_ci(c)} | {p} |")
    lines += [
        "",
        "Ranking the proposals of one step (the swarm's own proposals, oracle labels; mean within-group AUROC, "
        "0.5 = chance; 'vote wrong' = groups whose plurality winner is wrong while a right proposal is present):",
        "",
        "| N | scorer | AUROC within | groups | AUROC vote wrong | groups |",
        "|---|---|---|---|---|---|",
    ]
    for n, ranking in level["ranking"].items():
        for scorer, r in ranking.items():
            lines.append(
                f"| {n} | {scorer} | {_num(r['auc_within'])} | {r['groups']} | {_num(r['auc_vote_wrong'])} "
                f"| {r['groups_vote_wrong']} |"
            )
    return lines


def targets_markdown(targets: list[dict]) -> list[str]:
    if not targets:
        return []
    lines = [
        "",
        "## Targets",
        "",
        "A target is met when the measured difference reaches the margin and the whole CI is above 0.",
        "",
        "| target | where | measured | CI | met |",
        "|---|---|---|---|---|",
    ]
    for t in targets:
        where = t["at"] + (f", difficulty {t['bucket']}" if t.get("bucket") else "")
        note = f" ({t['note']})" if t.get("note") else ""
        lines.append(
            f"| {t['target']}{note} | {where} | {100 * t['measured']:+.1f} pts "
            f"| [{100 * t['ci'][0]:+.1f}, {100 * t['ci'][1]:+.1f}] | {'yes' if t['met'] else 'no'} |"
        )
    return lines


def markdown(report: dict) -> str:
    """The whole report as markdown (EM in %, differences in points with their bootstrap CI)."""
    lines = _header(report)
    if "answer_level" in report:
        lines += answer_level_markdown({**report, **report["answer_level"]})
    if "step_level" in report:
        lines += step_level_markdown(report["step_level"])
    lines += targets_markdown(report.get("targets", []))
    return "\n".join(lines) + "\n"


def _save_accuracy_vs_compute(fig, ax, report: dict, bucket: str, xlabel: str, path: Path) -> None:
    """The axes, title and file that both accuracy-vs-compute plots share."""
    import matplotlib.pyplot as plt

    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("exact match (%)")
    ax.set_title(f"{report['task']['name']} {bucket}: {report['n_test']} {report['split']} problems")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_answer_level(report: dict, path: Path) -> None:
    """Exact match vs forward passes per problem, first difficulty bucket: swarm and control per R."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level = report["answer_level"]
    name, b = next(iter(level["buckets"].items()))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rounds = sorted({row["rounds"] for row in b["grid"]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(rounds):
        rows = [row for row in b["grid"] if row["rounds"] == r]
        col = colors[i % len(colors)]
        ax.plot(
            [x["forward_passes"] for x in rows],
            [100 * x["swarm"] for x in rows],
            "o-",
            color=col,
            label=f"swarm, R={r}",
        )
        if all("independent_majority" in x for x in rows):
            ax.plot(
                [x["independent_forward_passes"] for x in rows],
                [100 * x["independent_majority"] for x in rows],
                "s--",
                color=col,
                alpha=0.6,
                label=f"indep. + majority, equal FP (R={r})",
            )
    rows0 = [row for row in b["grid"] if row["rounds"] == rounds[0]]
    ax.plot(
        [x["forward_passes"] for x in rows0],
        [100 * x["pass_at_n"] for x in rows0],
        ":",
        color="grey",
        label="pass@N (oracle)",
    )
    ax.plot(
        [b["greedy"]["forward_passes"]], [100 * b["greedy"]["swarm"]], "k*", markersize=12, label="greedy"
    )
    _save_accuracy_vs_compute(fig, ax, report, name, "agent-forward-passes per problem", path)


def output_dir(checkpoint: str | Path, out_dir: str | Path | None = None) -> Path:
    """``out_dir``, else ``<run dir of the checkpoint>/swarm_eval`` (the folder above ``checkpoints/``)."""
    if out_dir:
        return Path(out_dir)
    return RunLayout.of_checkpoint(Path(checkpoint).resolve()).root / "swarm_eval"


def plot_step_level(report: dict, path: Path) -> None:
    """Exact match vs forward passes per problem (first difficulty bucket): the step swarm and each control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, b = next(iter(report["step_level"]["buckets"].items()))
    rows = b["grid"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [
        ("step swarm", "forward_passes", "step_swarm", "o-"),
        ("indep. + majority", "independent_forward_passes", "independent_majority", "s--"),
        ("indep. + checker", "independent_checker_forward_passes", "independent_checker", "^--"),
        ("best-of-N (checker)", "independent_checker_forward_passes", "best_of_n_checker", "v:"),
    ]
    for label, fp, em, style in series:
        pts = [(r[fp], 100 * r[em]) for r in rows if not math.isnan(r[em])]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    g = b["greedy"]
    ax.plot([g["forward_passes"]], [100 * g["greedy"]], "k*", markersize=12, label="greedy")
    for r in rows:
        ax.annotate(f"N={r['agents']}", (r["forward_passes"], 100 * r["step_swarm"]), fontsize=7)
    _save_accuracy_vs_compute(fig, ax, report, name, "forward passes per problem (generator + checker)", path)


def write_report(report: dict[str, Any], out_dir: Path) -> Path:
    """Write ``results.json``, ``results.md`` and the plot(s) into ``out_dir``; returns ``out_dir``."""
    from moe_swarm.atomic import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "results.json", json.dumps(report, indent=2, allow_nan=True))
    atomic_write_text(out_dir / "results.md", markdown(report))
    if "answer_level" in report:
        plot_answer_level(report, out_dir / "em_vs_forward_passes.png")
    if "step_level" in report:
        plot_step_level(report, out_dir / "steps_em_vs_forward_passes.png")
    return out_dir
