"""`moe-swarm-train`: compose the Hydra config and run the language-model objective.

moe-swarm-train experiment=quickstart
moe-swarm-train -m model.moe.num_experts=4,8 trainer.max_steps=20     # a sweep
RUN_ID=my-run moe-swarm-train experiment=text_small                   # restart = resume
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from moe_swarm.cli.errors import user_errors
from moe_swarm.config import config_dir, hydra_job, register_resolvers, validate_run_config


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns the summary that is also written to <run_dir>/summary.json."""
    validate_run_config(copy.deepcopy(cfg))  # bad values fail in seconds, before Lightning is imported
    from moe_swarm.training.lm_objective import LanguageModelObjective
    from moe_swarm.training.run import Run

    return Run(cfg).execute(LanguageModelObjective())


register_resolvers()


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Train; in a sweep, refresh the sweep's results table; return the final-step metric to the sweeper."""
    from moe_swarm.store.summary import write_sweep_table

    with user_errors():
        summary = train(cfg)
    if hydra_job().multirun:
        runs_dir = Path(cfg.paths.runs_dir).resolve()
        table = write_sweep_table(runs_dir / "sweeps" / str(cfg.run_id).rsplit("-", 1)[0], runs_dir)
        if table:
            print(f"sweep results so far: {table}", flush=True)
    value = summary.get("metric_end")
    return float(value) if value is not None else None


def main() -> None:
    """Console script entry point (returns nothing: Hydra exits non-zero on failure)."""
    _hydra_main()


if __name__ == "__main__":
    main()
