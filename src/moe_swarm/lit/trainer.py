"""The Trainer of a run: ``cfg.trainer`` with loggers and callbacks composed from config, plus the
callbacks every run needs (final-step validation, checkpoint on SIGTERM, world-size check) and
atomic checkpoint writes."""

from __future__ import annotations

import logging
import warnings

import hydra
import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from moe_swarm.layout import RunLayout, metrics_lines_enabled
from moe_swarm.lit.callbacks import FinalStepValidation, MetricsLines
from moe_swarm.lit.fault import AtomicCheckpointIO, CheckpointOnSigterm, WorldSizeCheck

__all__ = ["build_callbacks", "build_loggers", "build_trainer", "quiet_lightning"]

log = logging.getLogger("moe_swarm.run")


def build_loggers(cfg: DictConfig) -> list:
    return [hydra.utils.instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg]


def build_callbacks(
    cfg: DictConfig, layout: RunLayout, expected_world_size: int | None = None
) -> list[Callback]:
    """Every entry of the ``callbacks`` config group whose ``enabled`` is true (default), then the
    callbacks the run layer always needs, built directly."""
    callbacks: list[Callback] = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        spec = OmegaConf.to_container(node, resolve=True)
        if not spec.pop("enabled", True):
            log.debug("callback %s disabled by config", name)
            continue
        callbacks.append(hydra.utils.instantiate(spec))
    if metrics_lines_enabled():  # set by the gRPC sidecar for its children
        callbacks.append(MetricsLines())
    callbacks += [
        FinalStepValidation(),
        CheckpointOnSigterm(str(layout.checkpoints)),
        WorldSizeCheck(expected_world_size),
    ]
    return callbacks


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def quiet_lightning() -> None:
    """One line per Lightning message and no adverts: under Hydra both Lightning's own handler and
    Hydra's root handlers printed every INFO line; Lightning advertises a cloud logger at every
    fit; Lightning's pytree helper warns about a torch deprecation the user cannot act on."""
    logging.getLogger("lightning").propagate = False
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in lg.filters):
            lg.addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*deprecated")


def build_trainer(cfg: DictConfig, layout: RunLayout, expected_world_size: int | None = None) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with loggers, callbacks and atomic checkpoint writes."""
    quiet_lightning()
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, layout, expected_world_size)
    return hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
