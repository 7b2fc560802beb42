"""`moe-swarm-train`: compose the Hydra config, instantiate data/module/trainer, fit, summarise.

moe-swarm-train experiment=quickstart
moe-swarm-train -m model.moe.num_experts=4,8 trainer.max_steps=20     # a sweep
RUN_ID=my-run moe-swarm-train experiment=text_small                   # restart = resume
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from moe_swarm.cli import user_errors
from moe_swarm.config import config_dir, hydra_job, register_resolvers, validate_run_config


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns the summary that is also written to <run_dir>/summary.json."""
    from moe_swarm.cluster import rendezvous_timeout_s, setup_cluster
    from moe_swarm.lit import run
    from moe_swarm.lit.fault import check_nodes_agree

    layout = run.prepare_run(cfg)
    validate_run_config(cfg)
    spec = setup_cluster(cfg.cluster, cfg.trainer)
    with run.hold_run(cfg, layout, owner=run.is_launching_rank_zero(spec.node_rank)) as previous:
        if (done := run.completed(cfg, previous)) is not None:
            return done
        run.setup_process(cfg)
        datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
        module = hydra.utils.instantiate(cfg.module, _convert_="all")
        # The resolved config travels in the checkpoint as plain data (never instantiated from there).
        module.hparams["run_config"] = OmegaConf.to_container(cfg, resolve=True)
        trainer = run.build_trainer(cfg, layout, expected_world_size=spec.world_size)
        resume = run.resume_checkpoint(cfg, layout, module)
        # Several nodes: all must agree on nodes, devices, run id and resuming before DDP starts.
        check_nodes_agree(
            spec, run_id=cfg.run_id, resuming=resume is not None, timeout_s=rendezvous_timeout_s(cfg.trainer)
        )
        return run.fit_and_summarise(
            cfg, module, datamodule, trainer, layout, resume=resume, previous=previous,
            describe=run.lm_summary, show=run.show_lm_summary,
        )  # fmt: skip


register_resolvers()


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Train; in a sweep, refresh the sweep's results table; return the final-step metric to the sweeper."""
    from moe_swarm.summary import write_sweep_table

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
