"""`moe-swarm-swarm-train`: train the swarm's scorer from the base model's own rollouts.

    moe-swarm-swarm-train checkpoint=runs/<base>/checkpoints/last.ckpt run_id=<id>          # value head
    moe-swarm-swarm-train checkpoint=... swarm=routing module.freeze_backbone=false trainer.max_steps=300
    moe-swarm-swarm-train checkpoint=runs/<steps-base>/checkpoints/last.ckpt swarm_objective=step_checker

Writes ``<run_dir>/checkpoints/swarm.ckpt`` (model weights + swarm state in one file: what
``moe-swarm-swarm-eval`` and the gRPC sidecar load), ``<run_dir>/swarm_state.pt`` and
``<run_dir>/summary.json``. The same ``run_id`` resumes from ``<run_dir>/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import copy
from typing import Any

import hydra
from omegaconf import DictConfig

from moe_swarm.cli.errors import user_errors
from moe_swarm.config import config_dir, register_resolvers, validate_run_config


def swarm_train(cfg: DictConfig) -> dict[str, Any]:
    """Run one scorer-training job; returns the summary also written to <run_dir>/summary.json."""
    validate_run_config(copy.deepcopy(cfg))  # bad values fail in seconds, before Lightning is imported
    from moe_swarm.training.run import Run
    from moe_swarm.training.scorer_objective import ScorerObjective

    return Run(cfg).execute(ScorerObjective())


register_resolvers()


@hydra.main(config_path=str(config_dir()), config_name="swarm_train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    with user_errors():
        summary = swarm_train(cfg)
    value = summary["metrics"].get(cfg.optimized_metric)
    return float(value) if value is not None else None


def main() -> None:
    """Console script entry point (returns nothing: Hydra exits non-zero on failure)."""
    _hydra_main()


if __name__ == "__main__":
    main()
