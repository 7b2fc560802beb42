"""The language-model objective of ``moe-swarm-train``: what it builds and what its summary adds."""

from __future__ import annotations

from typing import Any

import hydra
import lightning as L
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from moe_swarm.errors import UserError
from moe_swarm.store.layout import RunLayout
from moe_swarm.store.summary import format_train_summary
from moe_swarm.training.callbacks import ExpertLoadHeatmap, TokenThroughput
from moe_swarm.training.run import FitOutcome


class LanguageModelObjective:
    """Train the LM of ``cfg.module`` on the data of ``cfg.data``."""

    def build(self, cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule]:
        datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
        try:
            module = hydra.utils.instantiate(cfg.module, _convert_="all")
        except InstantiationException as exc:  # model.init_from: a bad folder is the user's to fix
            if isinstance(exc.__cause__, UserError):
                raise exc.__cause__ from None
            raise
        # The resolved config travels in the checkpoint as plain data (never instantiated from there).
        module.hparams["run_config"] = OmegaConf.to_container(cfg, resolve=True)
        return module, datamodule

    def report(self, cfg: DictConfig, layout: RunLayout, o: FitOutcome) -> dict[str, Any]:
        """Parameter counts, throughput, load balance, plots."""
        pc = o.module.model.count_parameters()
        tput = next((c for c in o.trainer.callbacks if isinstance(c, TokenThroughput)), None)
        heat = next((c for c in o.trainer.callbacks if isinstance(c, ExpertLoadHeatmap)), None)
        return {
            "tokens_per_s": round(tput.mean_tokens_per_s, 1) if tput and tput.seconds > 0 else None,
            "mfu": o.module.mfu(tput.mean_tokens_per_s) if tput and tput.seconds > 0 else None,
            "params": {"total": pc.total, "active": pc.active, "embedding": pc.embedding},
            "load_max_over_mean": o.end.get("router/load_max_over_mean"),
            # Experts (summed over MoE layers) that got no token over the last module.health_window steps.
            "dead_experts": o.end.get("router/dead_experts"),
            "plots": str(heat.dirpath) if heat and heat.last_path else None,
        }

    def show(self, summary: dict[str, Any]) -> None:
        print(format_train_summary(summary), flush=True)
