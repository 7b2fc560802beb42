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

from moe_swarm.config import config_dir, register_resolvers
from moe_swarm.data.tasks import task_from_spec
from moe_swarm.reporting.swarm import markdown, output_dir, write_report
from moe_swarm.store.checkpoint import load_checkpoint
from moe_swarm.swarm.eval_grids import evaluate
from moe_swarm.swarm.evaluation import Bootstrap, check_targets


def run_eval(cfg: DictConfig) -> dict:
    """Load the checkpoint, run the configured evaluation, write the report; returns it."""
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.mode not in ("answers", "steps"):
        raise ValueError(f"mode must be 'answers' or 'steps', got {cfg.mode!r}")
    ckpt = load_checkpoint(cfg.checkpoint, map_location=cfg.device)
    spec = OmegaConf.to_container(cfg.task, resolve=True) if cfg.task is not None else ckpt.task
    if not spec:
        raise ValueError(
            f"{cfg.checkpoint} names no reasoning task; pass task=mul or task=package.module:Class"
        )
    task, spec = task_from_spec(spec)  # a built-in name or a package.module:Class plug-in
    plain = OmegaConf.to_container(cfg, resolve=True)
    state = plain["swarm_state"] or ckpt.swarm_state

    def problems() -> list:  # drawn after the scorers are checked: a bad request fails fast
        return task.generate(cfg.split, int(cfg.n_test), seed=int(cfg.problem_seed))

    boot = Bootstrap(**plain["bootstrap"])
    report = {
        "checkpoint": str(cfg.checkpoint), "global_step": ckpt.global_step, "task": spec, "split": cfg.split,
        "n_test": int(cfg.n_test), "problem_seed": int(cfg.problem_seed), "mode": cfg.mode,
        "threads": torch.get_num_threads(), "device": str(cfg.device),
    }  # fmt: skip
    key = "step_level" if cfg.mode == "steps" else "answer_level"
    scorer_state = state if cfg.mode == "steps" or cfg.value_head else None
    level = report[key] = evaluate(ckpt.model, task, problems, cfg.mode, plain, scorer_state, boot)
    if cfg.mode == "answers":
        report.update(swarm_config=level.pop("swarm_config"), value_head=level.pop("value_head"))
    report["targets"] = check_targets(level, plain["targets"])
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
