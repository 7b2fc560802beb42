"""`moe-swarm-swarm-eval`: the swarm against greedy decoding and its compute-matched controls.

    moe-swarm-swarm-eval checkpoint=runs/<run>/checkpoints/swarm.ckpt
    moe-swarm-swarm-eval checkpoint=... grid.agents=[1,4] grid.rounds=[0,1] num_problems=200

On fixed problems of the checkpoint's reasoning task it runs greedy decoding and the swarm for every
(agents N, refinement rounds R) of the grid, and reports per task and difficulty: greedy EM, mean
single-agent EM, majority vote, score-weighted vote, best-of-N by value, pass@N (oracle coverage),
the swarm's own answer and forward passes per problem. Controls at equal forward passes: independent
agents + plain majority vote given each problem the swarm's own forward passes, and temperature-only
versus routing-noise diversity. Differences carry paired bootstrap 95% confidence intervals
(problems resampled). Writes ``results.json``, ``results.md`` and ``em_vs_forward_passes.png``.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from moe_swarm.config import config_dir, register_resolvers

log = logging.getLogger("moe_swarm.swarm_eval")

OUTCOMES = (
    "single_agent",
    "majority",
    "weighted",
    "rescored",
    "value_weighted",
    "best_of_n_value",
    "best_of_n_logprob",
    "pass_at_n",
    "swarm",
)


# ------------------------------------------------------------------------------------ statistics
def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], samples: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean of ``a - b`` over paired items and a percentile bootstrap CI (items resampled with replacement).

    ``a[i]`` and ``b[i]`` are two methods' scores on the same problem i, so the resampling keeps pairs
    together and problem difficulty cancels out of the difference.
    """
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap needs equal lengths, got {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError("paired bootstrap needs at least one pair")
    if samples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need samples >= 1 and 0 < level < 1, got samples={samples}, level={level}")
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    means = torch.empty(samples, dtype=torch.float64)
    step = max(1, 4_000_000 // d.numel())  # bound the index matrix to ~32 MB
    for start in range(0, samples, step):
        k = min(step, samples - start)
        idx = torch.randint(d.numel(), (k, d.numel()), generator=gen)
        means[start : start + k] = d[idx].mean(1)
    alpha = (1.0 - level) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    return {
        "diff": float(d.mean()),
        "low": low,
        "high": high,
        "n": int(d.numel()),
        "level": level,
        "samples": samples,
    }


def mean(xs: Sequence[float]) -> float:
    """Mean of the values that are not NaN (NaN marks "undefined for this problem"); NaN if none."""
    xs = [x for x in xs if not math.isnan(x)]
    return float(sum(xs) / len(xs)) if xs else float("nan")


def ranking_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(a random right record scores above a random wrong one), ties counting half; NaN unless both occur.

    Computed within one problem it says whether a scorer can pick the right answer among the candidates,
    which is what best-of-N and weighted votes need (an AUROC over all problems also rewards knowing
    which problems are easy).
    """
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# ------------------------------------------------------------------------------------ outcomes
def record_weights(records, score_mode: str, value: list[float] | None) -> list[float]:
    """What ``SwarmSolver.score`` would weigh each record by under ``score_mode``."""
    if score_mode in ("value", "both") and value is None:
        raise ValueError(f"score mode {score_mode!r} needs value-head probabilities")
    w = [1.0] * len(records)
    if score_mode in ("logprob", "both"):
        w = [x * math.exp(r.logprob) for x, r in zip(w, records)]
    if score_mode in ("value", "both"):
        w = [x * v for x, v in zip(w, value)]
    return w


def swarm_outcomes(
    results, problems, task, value_head=None, score_mode: str = "logprob"
) -> dict[str, list[float]]:
    """Per-problem outcomes (1.0 = exact match) of one swarm run, computed from its records.

    ``majority``: plurality over every record; ``weighted``: vote weighted by the records' own scores
    (the run's ``score`` mode); ``rescored``: weighted by ``score_mode`` recomputed from the records
    (so a control run can be re-voted the way the swarm votes); ``value_weighted`` /
    ``best_of_n_value``: the value head's P(correct) as vote weight / argmax (NaN without a head);
    ``best_of_n_logprob``: the record with the highest length-normalised log-likelihood;
    ``pass_at_n``: some record is right; ``swarm``: the solver's answer. Plus ``value_auc_within`` /
    ``logprob_auc_within`` (``ranking_auc`` of the scorer among the problem's records; NaN unless it
    has right and wrong ones), ``forward_passes``, ``flops`` and ``rounds_used`` per problem.
    """
    from moe_swarm.swarm import vote

    extra = ("value_auc_within", "logprob_auc_within", "forward_passes", "flops", "rounds_used")
    out: dict[str, list[float]] = {k: [] for k in (*OUTCOMES, *extra)}
    for res, prob in zip(results, problems, strict=True):
        recs = res.records
        right = [task.score(r.text, prob.answer) for r in recs]
        answers = [r.answer for r in recs]
        out["single_agent"].append(mean([float(x) for x in right]))
        out["pass_at_n"].append(float(any(right)))
        out["majority"].append(float(task.score(vote(answers).answer, prob.answer)))
        out["weighted"].append(float(task.score(vote(answers, [r.score for r in recs]).answer, prob.answer)))
        out["swarm"].append(float(task.score(res.answer, prob.answer)))
        out["best_of_n_logprob"].append(float(right[max(range(len(recs)), key=lambda i: recs[i].logprob)]))
        v = None
        if value_head is not None:
            with torch.no_grad():
                v = value_head.probability(torch.stack([r.thought for r in recs]).float()).tolist()
        rescored = vote(answers, record_weights(recs, score_mode, v)).answer
        out["rescored"].append(float(task.score(rescored, prob.answer)))
        out["logprob_auc_within"].append(ranking_auc([r.logprob for r in recs], right))
        if v is not None:
            out["value_weighted"].append(float(task.score(vote(answers, v).answer, prob.answer)))
            out["best_of_n_value"].append(float(right[max(range(len(v)), key=v.__getitem__)]))
            out["value_auc_within"].append(ranking_auc(v, right))
        else:
            out["value_weighted"].append(float("nan"))
            out["best_of_n_value"].append(float("nan"))
            out["value_auc_within"].append(float("nan"))
        out["forward_passes"].append(float(res.forward_passes))
        out["flops"].append(float(res.flops))
        out["rounds_used"].append(float(res.rounds_used))
    return out


def summarise(outcomes: dict[str, list[float]], index: list[int]) -> dict[str, float]:
    """Means of every outcome over the problems in ``index`` (NaN metrics stay NaN)."""
    return {k: mean([v[i] for i in index]) for k, v in outcomes.items()}


# ------------------------------------------------------------------------------------ running
class Evaluator:
    """Holds the model, task, problems and settings of one evaluation; each method is one measured run."""

    def __init__(self, model, tokenizer, task, problems, base_cfg, value_head, max_batch_rows: int | None):
        self.model, self.tok, self.task, self.problems = model, tokenizer, task, problems
        self.prompts = [p.prompt for p in problems]
        self.base = base_cfg if base_cfg.max_batch_rows else base_cfg.replace(max_batch_rows=max_batch_rows)
        self.head = value_head

    def solver(self, cfg):
        from moe_swarm.swarm import SwarmSolver

        head = self.head if cfg.score in ("value", "both") else None
        return SwarmSolver(self.model, cfg, self.tok, canonical=self.task.canonical, value_head=head)

    def greedy(self) -> dict[str, list[float]]:
        from moe_swarm.swarm import greedy_config

        cfg = greedy_config(self.base.max_new_tokens).replace(max_batch_rows=self.base.max_batch_rows)
        results = self.solver(cfg).solve(self.prompts)
        return swarm_outcomes(results, self.problems, self.task, None, "logprob")

    def swarm(self, cfg) -> tuple[list, dict[str, list[float]]]:
        results = self.solver(cfg).solve(self.prompts)
        return results, swarm_outcomes(results, self.problems, self.task, self.head, cfg.score)

    def independent(self, cfg, budgets: list[int]) -> dict[str, list[float]]:
        """Independent agents from ``cfg``'s distribution + plain majority vote at ``budgets`` forward passes.

        The outcome ``majority`` is the control's answer; ``rescored`` re-votes the same records with
        ``cfg.score`` weights (isolates what refinement adds beyond the weighting)."""
        from moe_swarm.swarm import independent_vote_at_budget

        control_cfg = cfg.replace(score="logprob")  # the control never uses the value head
        results = independent_vote_at_budget(
            self.model, self.tok, self.prompts, budgets, control_cfg, canonical=self.task.canonical
        )
        return swarm_outcomes(results, self.problems, self.task, self.head, cfg.score)


def time_batched(evaluator: Evaluator, agents: int, problems: int, repeats: int) -> dict[str, Any]:
    """Median wall time of one proposal round with ``agents`` batched agents vs one agent, same problems."""
    from moe_swarm.bench.timing import time_interleaved

    device = next(evaluator.model.parameters()).device
    prompts = evaluator.prompts[:problems]
    cfgs = {n: evaluator.base.replace(num_agents=n, rounds=0, early_exit_share=2.0) for n in (1, agents)}
    solvers = {n: evaluator.solver(c) for n, c in cfgs.items()}
    calls = {f"agents{n}": (lambda s=s: s.solve(prompts)) for n, s in solvers.items()}
    times = time_interleaved(calls, repeats=repeats, warmup=1, device=device)
    one, many = statistics.median(times["agents1"]), statistics.median(times[f"agents{agents}"])
    return {
        "agents": agents,
        "problems": len(prompts),
        "repeats": repeats,
        "rounds": 0,
        "median_s_one_agent": one,
        f"median_s_{agents}_agents": many,
        "ratio": many / one,
        "samples_one_agent": times["agents1"],
        f"samples_{agents}_agents": times[f"agents{agents}"],
    }


def difficulty_buckets(problems) -> dict[str, list[int]]:
    """Problem indices per difficulty; with more than one difficulty also ``"all"``."""
    buckets: dict[str, list[int]] = {}
    for i, p in enumerate(problems):
        buckets.setdefault(str(getattr(p, "difficulty", "all")), []).append(i)
    if len(buckets) > 1:
        buckets = {"all": list(range(len(problems))), **dict(sorted(buckets.items()))}
    return buckets


def compare(name: str, a: list[float], b: list[float], index: list[int], boot: dict, **where) -> dict:
    ci = paired_bootstrap_ci([a[i] for i in index], [b[i] for i in index], **boot)
    return {"comparison": name, **where, **ci}


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """The whole evaluation; returns the report written to ``results.json``."""
    from moe_swarm.checkpoint import load_model
    from moe_swarm.data.tokenizer import ByteTokenizer
    from moe_swarm.lit.swarm_module import task_from
    from moe_swarm.swarm import SwarmConfig, load_swarm_state

    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    model, hparams = load_model(cfg.checkpoint, map_location=cfg.device)
    task, task_spec = task_from(
        OmegaConf.to_container(cfg.task) if cfg.task is not None else None, hparams, str(cfg.checkpoint)
    )
    base = SwarmConfig.from_dict(OmegaConf.to_container(cfg.swarm, resolve=True))
    head = None
    if cfg.value_head:
        state = cfg.swarm_state if cfg.swarm_state else hparams.get("swarm_state")
        if state is not None:
            head, _ = load_swarm_state(state, map_location=cfg.device)
    if base.score in ("value", "both") and head is None:
        raise ValueError(
            f"swarm.score={base.score!r} needs a value head, but {cfg.checkpoint} carries none "
            f"(value_head={cfg.value_head}); train one with `moe-swarm-swarm-train checkpoint=...` and evaluate "
            "its checkpoints/swarm.ckpt, pass swarm_state=<swarm_state.pt>, or use swarm=logprob"
        )
    agents = sorted({int(n) for n in cfg.grid.agents})
    rounds = sorted({int(r) for r in cfg.grid.rounds})
    if not agents or not rounds or agents[0] < 1 or rounds[0] < 0:
        raise ValueError(f"grid.agents must be integers >= 1 and grid.rounds >= 0, got {agents} and {rounds}")
    ref = cfg.reference or {}
    ref_n, ref_r = (
        int(ref.get("agents") or agents[-1]),
        int(ref.get("rounds") if ref.get("rounds") is not None else rounds[-1]),
    )
    if ref_n not in agents or ref_r not in rounds:
        raise ValueError(
            f"reference cell (agents={ref_n}, rounds={ref_r}) must be in the grid {agents} x {rounds}"
        )
    problems = task.generate(cfg.split, int(cfg.num_problems), seed=int(cfg.problem_seed))
    ev = Evaluator(model, ByteTokenizer(), task, problems, base, head, cfg.max_batch_rows)
    boot = {
        "samples": int(cfg.bootstrap.samples),
        "level": float(cfg.bootstrap.level),
        "seed": int(cfg.bootstrap.seed),
    }
    buckets = difficulty_buckets(problems)

    log.info("greedy on %d problems", len(problems))
    greedy = ev.greedy()
    cells: dict[tuple[int, int], dict[str, Any]] = {}
    for r in rounds:
        for n in agents:
            t0 = time.perf_counter()
            cfg_nr = ev.base.replace(num_agents=n, rounds=r)
            results, out = ev.swarm(cfg_nr)
            control = None
            if cfg.controls.independent:
                control = ev.independent(cfg_nr, [int(x.forward_passes) for x in results])
            cells[(n, r)] = {"outcomes": out, "control": control, "seconds": time.perf_counter() - t0}
            log.info(
                "N=%d R=%d: swarm EM %.3f (%.1f FP/problem) in %.1f s",
                n,
                r,
                mean(out["swarm"]),
                mean(out["forward_passes"]),
                cells[(n, r)]["seconds"],
            )

    diversity: dict[str, dict[str, Any]] = {}
    modes = list(cfg.controls.diversity or [])
    if modes:
        ref_cfg = ev.base.replace(num_agents=ref_n, rounds=ref_r)
        budgets = [int(x) for x in cells[(ref_n, ref_r)]["outcomes"]["forward_passes"]]
        for mode in modes:
            mode_cfg = ref_cfg.replace(diversity=str(mode))
            if mode == ev.base.diversity:
                out = cells[(ref_n, ref_r)]["outcomes"]
            else:
                _, out = ev.swarm(mode_cfg)
            diversity[str(mode)] = {"swarm": out, "independent": ev.independent(mode_cfg, budgets)}

    report = build_report(
        cfg,
        hparams,
        task_spec,
        ev.base,
        head,
        problems,
        buckets,
        greedy,
        cells,
        diversity,
        (ref_n, ref_r),
        boot,
    )
    if cfg.timing.enabled:
        report["timing"] = {
            "threads": torch.get_num_threads(),
            "single_problem": time_batched(ev, int(cfg.timing.agents), 1, int(cfg.timing.repeats)),
            "batch": time_batched(
                ev, int(cfg.timing.agents), int(cfg.timing.batch_problems), int(cfg.timing.repeats)
            ),
        }
    report["goals"] = goals(report, cfg)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    out_dir = output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, allow_nan=True))
    (out_dir / "results.md").write_text(markdown(report))
    plot(report, out_dir / "em_vs_forward_passes.png")
    report["written_to"] = str(out_dir)
    return report


def output_dir(cfg: DictConfig) -> Path:
    """``out_dir``, else ``<run dir of the checkpoint>/swarm_eval`` (the folder above ``checkpoints/``)."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    ckpt = Path(cfg.checkpoint).resolve()
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir / "swarm_eval"


def build_report(cfg, hparams, task_spec, base, head, problems, buckets, greedy, cells, diversity, ref, boot):
    ref_n, ref_r = ref
    report: dict[str, Any] = {
        "checkpoint": str(cfg.checkpoint),
        "global_step": hparams.get("global_step"),
        "task": task_spec,
        "split": cfg.split,
        "num_problems": len(problems),
        "problem_seed": int(cfg.problem_seed),
        "swarm_config": base.to_dict(),
        "value_head": head is not None,
        "threads": torch.get_num_threads(),
        "device": str(cfg.device),
        "reference": {"agents": ref_n, "rounds": ref_r},
        "bootstrap": boot,
        "buckets": {},
    }
    for name, index in buckets.items():
        g = summarise(greedy, index)
        rows, comparisons = [], []
        for (n, r), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            out, control = cell["outcomes"], cell["control"]
            row = {"agents": n, "rounds": r, **summarise(out, index)}
            where = {"agents": n, "rounds": r}
            comparisons.append(compare("swarm - greedy", out["swarm"], greedy["swarm"], index, boot, **where))
            comparisons.append(
                compare("weighted - majority", out["weighted"], out["majority"], index, boot, **where)
            )
            if head is not None:
                comparisons.append(
                    compare(
                        "best_of_n_value - majority",
                        out["best_of_n_value"],
                        out["majority"],
                        index,
                        boot,
                        **where,
                    )
                )
            comparisons.append(
                compare(
                    "best_of_n_logprob - majority",
                    out["best_of_n_logprob"],
                    out["majority"],
                    index,
                    boot,
                    **where,
                )
            )
            if control is not None:
                c = summarise(control, index)
                row["independent"] = c["majority"]
                row["independent_weighted"] = c["rescored"]
                row["independent_forward_passes"] = c["forward_passes"]
                comparisons.append(
                    compare("swarm - independent", out["swarm"], control["majority"], index, boot, **where)
                )
                comparisons.append(
                    compare(
                        "swarm - independent weighted",
                        out["swarm"],
                        control["rescored"],
                        index,
                        boot,
                        **where,
                    )
                )
            rows.append(row)
        div_rows = []
        for mode, d in diversity.items():
            s, c = summarise(d["swarm"], index), summarise(d["independent"], index)
            div_rows.append(
                {
                    "diversity": mode,
                    "swarm": s["swarm"],
                    "swarm_forward_passes": s["forward_passes"],
                    "pass_at_n": s["pass_at_n"],
                    "single_agent": s["single_agent"],
                    "independent": c["majority"],
                    "independent_forward_passes": c["forward_passes"],
                }
            )
        if "temperature" in diversity and "routing" in diversity:
            t, rt = diversity["temperature"], diversity["routing"]
            where = {"agents": ref_n, "rounds": ref_r}
            comparisons.append(
                compare(
                    "temperature - routing (indep. + majority, equal FP)",
                    t["independent"]["majority"],
                    rt["independent"]["majority"],
                    index,
                    boot,
                    **where,
                )
            )
            comparisons.append(
                compare(
                    "temperature - routing (swarm)",
                    t["swarm"]["swarm"],
                    rt["swarm"]["swarm"],
                    index,
                    boot,
                    **where,
                )
            )
        report["buckets"][name] = {
            "problems": len(index),
            "greedy": {"em": g["swarm"], "forward_passes": g["forward_passes"]},
            "grid": rows,
            "diversity": div_rows,
            "comparisons": comparisons,
        }
    return report


def _find(comparisons: list[dict], name: str, n: int, r: int) -> dict | None:
    return next(
        (c for c in comparisons if c["comparison"] == name and c["agents"] == n and c["rounds"] == r), None
    )


def goals(report: dict, cfg: DictConfig) -> list[dict[str, Any]]:
    """The issue's benchmark goals, each with the measured value and whether it was met."""
    g = cfg.goals
    buckets = report["buckets"]
    mid = [k for k, b in buckets.items() if k != "all" or len(buckets) == 1]
    mid = [k for k in mid if g.mid_low <= buckets[k]["greedy"]["em"] <= g.mid_high]
    bucket = mid[0] if mid else next(iter(buckets))
    note = "" if mid else f"no difficulty has greedy EM in [{g.mid_low}, {g.mid_high}]; using {bucket!r}"
    comps = buckets[bucket]["comparisons"]
    n_ref, r_ref = report["reference"]["agents"], report["reference"]["rounds"]
    out = []

    def add(goal: str, c: dict | None, threshold: float, at: str) -> None:
        """A margin goal is met when the point estimate reaches it; "beats" (threshold 0) needs the whole CI > 0."""
        if c is None:
            return
        met = c["diff"] >= threshold if threshold > 0 else c["low"] > 0
        out.append(
            {
                "goal": goal,
                "bucket": bucket,
                "at": at,
                "measured": c["diff"],
                "ci": [c["low"], c["high"]],
                "threshold": threshold,
                "met": bool(met),
                "ci_excludes_zero": c["low"] > 0 or c["high"] < 0,
                "note": note,
            }
        )

    add(
        f"swarm at N={n_ref} beats greedy by >= {g.greedy_margin:.0%} EM",
        _find(comps, "swarm - greedy", n_ref, r_ref),
        float(g.greedy_margin),
        f"N={n_ref}, R={r_ref}",
    )
    for n in sorted({c["agents"] for c in comps if c["agents"] > 1}):  # one agent: nothing to weigh
        add(
            "score-weighted vote beats majority vote at the same N",
            _find(comps, "weighted - majority", n, r_ref),
            0.0,
            f"N={n}, R={r_ref}",
        )
    for r in sorted({c["rounds"] for c in comps if c["rounds"] > 0}):
        add(
            "full swarm beats independent agents + vote at equal forward passes",
            _find(comps, "swarm - independent", n_ref, r),
            0.0,
            f"N={n_ref}, R={r}",
        )
        add(
            "full swarm beats independent agents + the same weighted vote at equal forward passes",
            _find(comps, "swarm - independent weighted", n_ref, r),
            0.0,
            f"N={n_ref}, R={r}",
        )
    timing = report.get("timing")
    if timing:
        for scope in ("single_problem", "batch"):
            t = timing[scope]
            out.append(
                {
                    "goal": f"batched N={t['agents']} costs <= {g.wall_ratio}x one agent's wall time",
                    "bucket": None,
                    "at": f"{scope} ({t['problems']} problems, {timing['threads']} threads)",
                    "measured": t["ratio"],
                    "ci": None,
                    "threshold": float(g.wall_ratio),
                    "met": t["ratio"] <= g.wall_ratio,
                    "ci_excludes_zero": None,
                    "note": "",
                }
            )
    return out


# ------------------------------------------------------------------------------------ writing
def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.3f}"


def _ci(c: dict) -> str:
    return f"{100 * c['diff']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]"


def markdown(report: dict) -> str:
    """The report as markdown tables (EM in %, differences in points with their bootstrap CI)."""
    task = report["task"]
    args = ", ".join(f"{k}={v}" for k, v in task["kwargs"].items())
    level = f"{report['bootstrap']['level']:.0%}"
    lines = [
        f"# Swarm evaluation: {task['name']}({args}), split {report['split']}, {report['num_problems']} problems",
        "",
        f"Checkpoint `{report['checkpoint']}` (step {report['global_step']}); value head: "
        f"{'yes' if report['value_head'] else 'no'}; {report['threads']} threads on {report['device']}; "
        f"{report.get('seconds', '?')} s. Swarm config: `{json.dumps(report['swarm_config'])}`.",
        "",
        "EM = exact match in %. FP = agent-forward-passes per problem. Grid cells run the swarm with N agents "
        "per round and R refinement rounds; majority / weighted / value columns re-vote the same records. "
        "'indep. @ FP' = independent agents + plain majority vote given each problem the swarm's own forward "
        "passes; 'indep. weighted @ FP' re-votes those agents with the swarm's score weights (so the difference "
        f"to the swarm is what resampling and early exit add). Differences in EM points with paired bootstrap "
        f"{level} CIs.",
    ]
    for name, b in report["buckets"].items():
        lines += [
            "",
            f"## Difficulty {name} ({b['problems']} problems): greedy EM {_pct(b['greedy']['em'])} "
            f"at {b['greedy']['forward_passes']:.1f} FP",
            "",
        ]
        lines += [
            "| N | R | FP | single agent | majority | score-weighted | value-weighted | best-of-N (value) "
            "| best-of-N (likelihood) | pass@N | swarm | indep. @ FP | indep. weighted @ FP | swarm − indep. "
            "| swarm − greedy |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in b["grid"]:
            n, r = row["agents"], row["rounds"]
            vs_ind = _find(b["comparisons"], "swarm - independent", n, r)
            vs_greedy = _find(b["comparisons"], "swarm - greedy", n, r)
            lines.append(
                f"| {n} | {r} | {row['forward_passes']:.1f} | {_pct(row['single_agent'])} | {_pct(row['majority'])} "
                f"| {_pct(row['weighted'])} | {_pct(row['value_weighted'])} | {_pct(row['best_of_n_value'])} "
                f"| {_pct(row['best_of_n_logprob'])} | {_pct(row['pass_at_n'])} | {_pct(row['swarm'])} "
                f"| {_pct(row.get('independent'))} "
                f"| {_pct(row.get('independent_weighted'))} "
                f"| {_ci(vs_ind) if vs_ind else '—'} | {_ci(vs_greedy)} |"
            )
        ref = report["reference"]
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
                "| diversity | swarm EM | swarm FP | single agent | pass@N | indep. + majority EM | indep. FP |",
                "|---|---|---|---|---|---|---|",
            ]
            for d in b["diversity"]:
                lines.append(
                    f"| {d['diversity']} | {_pct(d['swarm'])} | {d['swarm_forward_passes']:.1f} "
                    f"| {_pct(d['single_agent'])} | {_pct(d['pass_at_n'])} | {_pct(d['independent'])} "
                    f"| {d['independent_forward_passes']:.1f} |"
                )
        lines += ["", "| comparison | N | R | Δ EM points [CI] |", "|---|---|---|---|"]
        for c in b["comparisons"]:
            lines.append(f"| {c['comparison']} | {c['agents']} | {c['rounds']} | {_ci(c)} |")
    if report.get("timing"):
        t = report["timing"]
        lines += [
            "",
            f"## Wall time ({t['threads']} threads, median of repeats, one proposal round)",
            "",
            "| problems | one agent (s) | batched agents (s) | agents | ratio |",
            "|---|---|---|---|---|",
        ]
        for scope in ("single_problem", "batch"):
            x = t[scope]
            many = x[f"median_s_{x['agents']}_agents"]
            lines.append(
                f"| {x['problems']} | {x['median_s_one_agent']:.4f} | {many:.4f} | {x['agents']} "
                f"| {x['ratio']:.2f} |"
            )
    if report.get("goals"):
        lines += [
            "",
            "## Goals",
            "",
            "A margin goal is met when the measured difference reaches it; 'beats' needs "
            "the whole CI above 0.",
            "",
            "| goal | where | measured | CI | met |",
            "|---|---|---|---|---|",
        ]
        for g in report["goals"]:
            if g["ci"] is None:
                measured, ci = f"{g['measured']:.2f}x", "—"
            else:
                measured = f"{100 * g['measured']:+.1f} pts"
                ci = f"[{100 * g['ci'][0]:+.1f}, {100 * g['ci'][1]:+.1f}]"
            where = g["at"] + (f", difficulty {g['bucket']}" if g["bucket"] else "")
            note = f" ({g['note']})" if g["note"] else ""
            lines.append(
                f"| {g['goal']}{note} | {where} | {measured} | {ci} | {'yes' if g['met'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Exact match vs forward passes per problem, first difficulty bucket: swarm and control per R."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, b = next(iter(report["buckets"].items()))
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
        if all("independent" in x for x in rows):
            ax.plot(
                [x["independent_forward_passes"] for x in rows],
                [100 * x["independent"] for x in rows],
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
        label=f"pass@N (oracle), R={rounds[0]}",
    )
    ax.plot([b["greedy"]["forward_passes"]], [100 * b["greedy"]["em"]], "k*", markersize=12, label="greedy")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("agent-forward-passes per problem")
    ax.set_ylabel("exact match (%)")
    task = report["task"]
    ax.set_title(f"{task['name']} {name}: {report['num_problems']} {report['split']} problems")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


register_resolvers()


@hydra.main(config_path=str(config_dir()), config_name="swarm_eval", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    report = run_eval(cfg)
    print((Path(report["written_to"]) / "results.md").read_text())
    print(f"written to {report['written_to']}", flush=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _hydra_main()


if __name__ == "__main__":
    main()
