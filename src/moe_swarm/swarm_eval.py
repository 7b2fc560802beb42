"""`moe-swarm-swarm-eval`: the swarm against greedy decoding and its compute-matched controls.

    moe-swarm-swarm-eval checkpoint=runs/<run>/checkpoints/swarm.ckpt
    moe-swarm-swarm-eval checkpoint=... grid.agents=[1,4] grid.rounds=[0,1] n_test=200 problem_seed=7
    moe-swarm-swarm-eval checkpoint=runs/<checker>/checkpoints/swarm.ckpt mode=steps   # the step swarm

Writes ``results.json``, ``results.md`` and the plots (docs/swarm.md, "Evaluation").
"""

from __future__ import annotations

import logging
import time

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from moe_swarm.checkpoint import load_checkpoint
from moe_swarm.config import config_dir, register_resolvers
from moe_swarm.data import ByteTokenizer, get_task
from moe_swarm.reporting.swarm import markdown, output_dir, write_report
from moe_swarm.swarm import StepSwarmConfig, SwarmConfig, load_step_checker, load_swarm_state
from moe_swarm.swarm.evaluation import (
    AnswerLevelRuns,
    Bootstrap,
    GridSettings,
    answer_level_report,
    check_targets,
    require_value_head,
)
from moe_swarm.swarm.step_evaluation import StepLevelRuns, step_level_report


def run_eval(cfg: DictConfig) -> dict:
    """Load the checkpoint, run the configured evaluation, write the report; returns it."""
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    ckpt = load_checkpoint(cfg.checkpoint, map_location=cfg.device)
    spec = OmegaConf.to_container(cfg.task, resolve=True) if cfg.task is not None else ckpt.task
    if not spec:
        raise ValueError(
            f"{cfg.checkpoint} names no reasoning task; pass task={{name: mul, kwargs: {{...}}}}"
        )
    task = get_task(spec["name"], **dict(spec.get("kwargs") or {}))
    base = SwarmConfig.from_dict(OmegaConf.to_container(cfg.swarm, resolve=True))
    state = (cfg.swarm_state or ckpt.swarm_state) if cfg.value_head and cfg.mode == "answers" else None
    head = load_swarm_state(state, map_location=cfg.device)[0] if state is not None else None
    if cfg.mode == "answers":
        require_value_head(base, head)
    elif cfg.mode != "steps":
        raise ValueError(f"mode must be 'answers' or 'steps', got {cfg.mode!r}")
    problems = task.generate(cfg.split, int(cfg.n_test), seed=int(cfg.problem_seed))
    report = {
        "checkpoint": str(cfg.checkpoint), "global_step": ckpt.global_step, "task": spec, "split": cfg.split,
        "n_test": len(problems), "problem_seed": int(cfg.problem_seed), "mode": cfg.mode,
        "threads": torch.get_num_threads(), "device": str(cfg.device),
    }  # fmt: skip
    boot = Bootstrap(**OmegaConf.to_container(cfg.bootstrap))
    if cfg.mode == "steps":
        checker, _ = load_step_checker(cfg.swarm_state or ckpt.swarm_state, map_location=cfg.device)
        steps = StepSwarmConfig.from_dict(OmegaConf.to_container(cfg.steps, resolve=True))
        runs = StepLevelRuns(
            ckpt.model, ByteTokenizer(), task, problems, steps, checker, cfg.step_level.max_new_tokens
        )
        level = step_level_report(
            runs, list(cfg.step_level.agents), boot, list(cfg.step_level.ablation_votes)
        )
        report["step_level"] = level
    else:
        runs = AnswerLevelRuns(ckpt.model, ByteTokenizer(), task, problems, base, head, cfg.max_batch_rows)
        report["answer_level"] = answer_level_report(
            runs, GridSettings.from_config(OmegaConf.to_container(cfg)), boot
        )
        report.update(swarm_config=base.to_dict(), value_head=head is not None)
        level = report["answer_level"]
    report["targets"] = check_targets(level, OmegaConf.to_container(cfg.targets))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["written_to"] = str(write_report(report, output_dir(cfg.checkpoint, cfg.out_dir)))
    return report


register_resolvers()


@hydra.main(config_path=str(config_dir()), config_name="swarm_eval", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    report = run_eval(cfg)
    print(markdown(report), f"written to {report['written_to']}", sep="\n", flush=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _hydra_main()


if __name__ == "__main__":
    main()
