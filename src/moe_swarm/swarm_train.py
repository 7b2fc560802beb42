"""`moe-swarm-swarm-train`: train the swarm's value head from its own rollouts on a base checkpoint.

    moe-swarm-swarm-train checkpoint=runs/<base>/checkpoints/last.ckpt run_id=<id>
    moe-swarm-swarm-train checkpoint=... swarm=routing module.freeze_backbone=false trainer.max_steps=300

Writes ``<run_dir>/checkpoints/swarm.ckpt`` (model weights + swarm state in one file: what
``moe-swarm-swarm-eval`` and the gRPC sidecar load), ``<run_dir>/swarm_state.pt`` and
``<run_dir>/summary.json``. The same ``run_id`` resumes from ``<run_dir>/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from moe_swarm.config import config_dir, register_resolvers
from moe_swarm.train import (
    SIGTERM_EXIT_CODE,
    build_callbacks,
    build_loggers,
    last_checkpoint,
    prepare_run,
    scalar_metrics,
)

log = logging.getLogger("moe_swarm.swarm_train")
SWARM_CHECKPOINT = "swarm.ckpt"
SWARM_STATE_FILE = "swarm_state.pt"


def write_swarm_checkpoint(
    source: str | Path, base_checkpoint: str | Path, out: Path, extra_hparams: dict
) -> dict:
    """One model checkpoint holding the weights of ``source`` (a swarm-training checkpoint), the base
    run's hyper-parameters (task, run config) and ``swarm_state``; returns the swarm state."""
    from moe_swarm.checkpoint import load_model, save_model_checkpoint

    model, hp = load_model(source)
    state = hp.get("swarm_state")
    if not isinstance(state, dict):
        raise ValueError(f"{source} holds no swarm state; it was not written by moe-swarm-swarm-train")
    _, base_hp = load_model(base_checkpoint)
    base_hp.pop("swarm_state", None)
    base_hp["global_step"] = hp.get("base_global_step", base_hp.get("global_step"))
    base_hp["swarm_train"] = extra_hparams
    save_model_checkpoint(out, model, base_hp, extra={"swarm_state": state})
    return state


def swarm_train(cfg: DictConfig) -> dict[str, Any]:
    """Run one value-head training job; returns the summary also written to <run_dir>/summary.json."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from moe_swarm.lit.swarm_module import ProblemDataModule, SwarmValueModule

    run_dir = prepare_run(cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(cfg.seed, workers=True)
    swarm = OmegaConf.to_container(cfg.swarm, resolve=True)
    task = OmegaConf.to_container(cfg.task, resolve=True) if cfg.task is not None else None
    module = SwarmValueModule(
        checkpoint=str(cfg.checkpoint),
        swarm=swarm,
        task=task,
        **OmegaConf.to_container(cfg.module, resolve=True),
    )
    datamodule = ProblemDataModule(module.task, **OmegaConf.to_container(cfg.data, resolve=True))
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, has_logger=bool(loggers))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    resume = last_checkpoint(run_dir) if cfg.resume else None
    start: dict[str, float] = {}
    if resume is None and cfg.validate_before_fit:
        start = scalar_metrics(trainer.validate(module, datamodule=datamodule, verbose=False)[0])
    t0 = time.perf_counter()
    status = "succeeded"
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    except SIGTERMException:
        status = "stopped"
    wall = time.perf_counter() - t0
    end = scalar_metrics(trainer.callback_metrics)

    ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best = (ckpt_cb.best_model_path or None) if ckpt_cb else None
    last = last_checkpoint(run_dir)
    source = best or (str(last) if last else None)
    summary: dict[str, Any] = {
        "run_id": cfg.run_id,
        "status": status,
        "run_dir": str(run_dir),
        "base_checkpoint": str(cfg.checkpoint),
        "checkpoint": None,
        "swarm_state": None,
        "lightning_checkpoint": str(last) if last else None,
        "best_checkpoint": best,
        "head_from": source,
        "resumed_from": str(resume) if resume else None,
        "global_step": trainer.global_step,
        "wall_seconds": round(wall, 2),
        "task": module.hparams.task,
        "swarm": module.swarm_cfg.to_dict(),
        "freeze_backbone": bool(cfg.module.freeze_backbone),
        "metrics_start": start,
        "metrics": end,
    }
    if trainer.is_global_zero and source is not None:
        out = run_dir / "checkpoints" / SWARM_CHECKPOINT
        extra = {
            "run_id": cfg.run_id,
            "source": source,
            "module": OmegaConf.to_container(cfg.module, resolve=True),
        }
        state = write_swarm_checkpoint(source, cfg.checkpoint, out, extra)
        torch.save(state, run_dir / SWARM_STATE_FILE)
        summary["checkpoint"] = str(out)
        summary["swarm_state"] = str(run_dir / SWARM_STATE_FILE)
    if trainer.is_global_zero:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary)
    if status == "stopped":
        raise SystemExit(SIGTERM_EXIT_CODE)
    return summary


def print_summary(s: dict[str, Any]) -> None:
    def metric(name: str) -> str:
        a, b = s["metrics_start"].get(name), s["metrics"].get(name)
        fa = "-" if a is None else f"{a:.4f}"
        fb = "-" if b is None else f"{b:.4f}"
        return f"{fa} -> {fb}"

    lines = [
        "",
        f"== swarm value head {s['run_id']}: {s['status']} after {s['global_step']} steps ({s['wall_seconds']} s)",
        f"   val/value_loss {metric('val/value_loss')}   val/value_auc {metric('val/value_auc')}",
        f"   val EM: majority {metric('val/majority')}, value-weighted vote {metric('val/value_weighted')}, "
        f"swarm {metric('val/swarm')}",
        f"   checkpoint (model + swarm state): {s['checkpoint']}",
        f"   summary: {s['run_dir']}/summary.json",
        "",
    ]
    print("\n".join(lines), flush=True)


register_resolvers()


@hydra.main(config_path=str(config_dir()), config_name="swarm_train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    summary = swarm_train(cfg)
    value = summary["metrics"].get("val/value_loss")
    return float(value) if value is not None else None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _hydra_main()


if __name__ == "__main__":
    sys.exit(main())
