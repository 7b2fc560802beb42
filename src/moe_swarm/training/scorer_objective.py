"""The objective of ``moe-swarm-swarm-train``: train one swarm scorer, then write what the swarm loads.

``cfg.module`` names the scorer's recipe (:mod:`moe_swarm.training.scorer_recipes`, chosen by the
``swarm_objective`` config group); the recipe gives the label source and the
:class:`~moe_swarm.training.scorer_module.ScorerModule`, and ``cfg.data`` the datamodule that serves the
label source's batches. After the fit, rank 0 writes ``<run_dir>/checkpoints/swarm.ckpt`` (model
weights + swarm state in one file: what ``moe-swarm-swarm-eval`` and the gRPC sidecar load) and
``<run_dir>/swarm_state.pt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from moe_swarm.atomic import atomic_torch_save
from moe_swarm.store.checkpoint import load_model, save_model_checkpoint
from moe_swarm.store.layout import RunLayout
from moe_swarm.training.run import FitOutcome


class ScorerObjective:
    """Build the recipe of ``cfg.module``, report and show a scorer run."""

    def __init__(self) -> None:
        self.recipe: Any = None
        self.labels: Any = None

    def build(self, cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule]:
        task = OmegaConf.to_container(cfg.task, resolve=True) if cfg.task is not None else None
        if (OmegaConf.select(cfg, "module.rank_weight") or 0) > 0 and not OmegaConf.select(
            cfg, "data.group_batches"
        ):
            raise ValueError(
                "module.rank_weight > 0 ranks proposals within a vote group, which needs batches of whole groups: "
                "add data.group_batches=true"
            )
        self.recipe = hydra.utils.instantiate(
            cfg.module, checkpoint=str(cfg.checkpoint), task=task, _convert_="all"
        )
        labels, module = self.recipe.build()
        self.labels = labels
        datamodule = hydra.utils.instantiate(cfg.data, labels=labels, _convert_="all")
        return module, datamodule

    def report(self, cfg: DictConfig, layout: RunLayout, o: FitOutcome) -> dict[str, Any]:
        """Summary fields of a scorer run; on rank 0 also writes swarm.ckpt and swarm_state.pt."""
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
            "objective": self.recipe.name,
            "swarm": o.module.hparams.get("swarm") or o.module.hparams.get("steps"),
            "freeze_backbone": o.module.hparams.get("freeze_backbone"),  # value head only
        }
        history = getattr(self.labels, "history", None)
        if history:  # step checker: what each collection round held and how the checker ranked it
            fields["rounds"] = history
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

    def show(self, s: dict[str, Any]) -> None:
        def metric(name: str) -> str:
            a, b = s["metrics_start"].get(name), s["metrics"].get(name)
            fa = "-" if a is None else f"{a:.4f}"
            fb = "-" if b is None else f"{b:.4f}"
            return f"{fa} -> {fb}"

        lines = [
            "",
            f"== {s['objective']} {s['run_id']}: {s['status']} after {s['global_step']} steps ({s['wall_seconds']} s)",
            *(f"   {name} {metric(name)}" for name in self.recipe.shown),
            f"   checkpoint (model + swarm state): {s['checkpoint']}",
            f"   summary: {s['run_dir']}/summary.json",
            "",
        ]
        print("\n".join(lines), flush=True)


def write_swarm_checkpoint(
    source: str | Path, base_checkpoint: str | Path, out: Path, extra_hparams: dict
) -> dict:
    """One model checkpoint holding the weights of ``source`` (a swarm-training checkpoint), the base
    run's hyper-parameters (task, run config) and ``swarm_state``; returns the swarm state."""
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
