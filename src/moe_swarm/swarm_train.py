"""`moe-swarm-swarm-train`: train the swarm's scorer from the base model's own rollouts.

    moe-swarm-swarm-train checkpoint=runs/<base>/checkpoints/last.ckpt run_id=<id>          # value head
    moe-swarm-swarm-train checkpoint=... swarm=routing module.freeze_backbone=false trainer.max_steps=300
    moe-swarm-swarm-train checkpoint=runs/<steps-base>/checkpoints/last.ckpt swarm_objective=step_checker

Writes ``<run_dir>/checkpoints/swarm.ckpt`` (model weights + swarm state in one file: what
``moe-swarm-swarm-eval`` and the gRPC sidecar load), ``<run_dir>/swarm_state.pt`` and
``<run_dir>/summary.json``. The same ``run_id`` resumes from ``<run_dir>/checkpoints/last.ckpt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from moe_swarm.atomic import atomic_torch_save
from moe_swarm.cli import user_errors
from moe_swarm.config import config_dir, register_resolvers, validate_run_config
from moe_swarm.layout import RunLayout


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
    """Run one scorer-training job; returns the summary also written to <run_dir>/summary.json."""
    from moe_swarm.lit import run

    layout = run.prepare_run(cfg)
    validate_run_config(cfg)
    with run.hold_run(cfg, layout, owner=run.is_launching_rank_zero()) as previous:
        if (done := run.completed(cfg, previous)) is not None:
            return done
        run.setup_process(cfg)
        task = OmegaConf.to_container(cfg.task, resolve=True) if cfg.task is not None else None
        module = hydra.utils.instantiate(
            cfg.module, checkpoint=str(cfg.checkpoint), task=task, _convert_="all"
        )
        datamodule = hydra.utils.instantiate(cfg.data, module=module, _convert_="all")
        trainer = run.build_trainer(cfg, layout)
        resume = run.resume_checkpoint(cfg, layout, module)

        def describe(o: run.FitOutcome) -> dict[str, Any]:
            return _swarm_fields(cfg, layout, o)

        return run.fit_and_summarise(
            cfg, module, datamodule, trainer, layout, resume=resume, previous=previous,
            describe=describe, show=print_summary,
        )  # fmt: skip


def _swarm_fields(cfg: DictConfig, layout: RunLayout, o: Any) -> dict[str, Any]:
    """Summary fields of a scorer run; on rank 0 also writes swarm.ckpt and swarm_state.pt."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt_cb = next((c for c in o.trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    best = (ckpt_cb.best_model_path or None) if ckpt_cb else None
    last = layout.existing_last_checkpoint()
    source = best or (str(last) if last else None)
    fields: dict[str, Any] = {
        "base_checkpoint": str(cfg.checkpoint),
        "checkpoint": None,
        "swarm_state": None,
        "lightning_checkpoint": str(last) if last else None,
        "head_from": source,
        "task": o.module.hparams.task,
        "objective": str(cfg.module._target_).rsplit(".", 1)[-1],
        "swarm": o.module.hparams.get("swarm") or o.module.hparams.get("steps"),
        "freeze_backbone": o.module.hparams.get("freeze_backbone"),  # value head only
    }
    if o.trainer.is_global_zero and source is not None:
        extra = {
            "run_id": cfg.run_id,
            "source": source,
            "module": OmegaConf.to_container(cfg.module, resolve=True),
        }
        state = write_swarm_checkpoint(source, cfg.checkpoint, layout.swarm_checkpoint, extra)
        atomic_torch_save(state, layout.swarm_state)
        fields["checkpoint"] = str(layout.swarm_checkpoint)
        fields["swarm_state"] = str(layout.swarm_state)
    return fields


def print_summary(s: dict[str, Any]) -> None:
    def metric(name: str) -> str:
        a, b = s["metrics_start"].get(name), s["metrics"].get(name)
        fa = "-" if a is None else f"{a:.4f}"
        fb = "-" if b is None else f"{b:.4f}"
        return f"{fa} -> {fb}"

    if s["objective"] == "StepCheckerModule":
        shown = ["val/checker_loss", "val/checker_auc_within", "val/checker_auc_vote_wrong"]
        shown += ["val/logprob_auc_within", "val/logprob_auc_vote_wrong"]
    else:
        shown = ["val/value_loss", "val/value_auc", "val/majority", "val/value_weighted", "val/swarm"]
    lines = [
        "",
        f"== {s['objective']} {s['run_id']}: {s['status']} after {s['global_step']} steps ({s['wall_seconds']} s)",
        *(f"   {name} {metric(name)}" for name in shown),
        f"   checkpoint (model + swarm state): {s['checkpoint']}",
        f"   summary: {s['run_dir']}/summary.json",
        "",
    ]
    print("\n".join(lines), flush=True)


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
