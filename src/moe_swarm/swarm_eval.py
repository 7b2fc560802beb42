"""`moe-swarm-swarm-eval`: the swarm against greedy decoding and its compute-matched controls.

    moe-swarm-swarm-eval checkpoint=runs/<run>/checkpoints/swarm.ckpt
    moe-swarm-swarm-eval checkpoint=... grid.agents=[1,4] grid.rounds=[0,1] n_test=200 problem_seed=7

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
from moe_swarm.swarm import SwarmConfig, load_swarm_state
from moe_swarm.swarm.evaluation import (
    AnswerLevelRuns,
    Bootstrap,
    GridSettings,
    answer_level_report,
    check_targets,
    require_value_head,
)


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
    state = (cfg.swarm_state or ckpt.swarm_state) if cfg.value_head else None
    head = load_swarm_state(state, map_location=cfg.device)[0] if state is not None else None
    require_value_head(base, head)
    grid = GridSettings.from_config(OmegaConf.to_container(cfg, resolve=True))
    problems = task.generate(cfg.split, int(cfg.n_test), seed=int(cfg.problem_seed))
    runs = AnswerLevelRuns(ckpt.model, ByteTokenizer(), task, problems, base, head, cfg.max_batch_rows)
    answer_level = answer_level_report(runs, grid, Bootstrap(**OmegaConf.to_container(cfg.bootstrap)))
    report = {
        "checkpoint": str(cfg.checkpoint),
        "global_step": ckpt.global_step,
        "task": spec,
        "split": cfg.split,
        "n_test": len(problems),
        "problem_seed": int(cfg.problem_seed),
        "swarm_config": base.to_dict(),
        "value_head": head is not None,
        "threads": torch.get_num_threads(),
        "device": str(cfg.device),
        "answer_level": answer_level,
    }
    report["targets"] = check_targets(answer_level, OmegaConf.to_container(cfg.targets))
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
