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

from moe_swarm.scale.fault import AtomicCheckpointIO, CheckpointOnSigterm, WorldSizeCheck
from moe_swarm.store.layout import RunLayout, metrics_lines_enabled
from moe_swarm.training.callbacks import (
    FinalStepValidation,
    MetricsLines,
    ProgressLines,
    StepProgressBar,
    stdout_is_terminal,
)

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
    if not stdout_is_terminal():  # a redrawing bar shows nothing in a log file or pod log: plain lines
        callbacks = [ProgressLines() if isinstance(c, StepProgressBar) else c for c in callbacks]
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


class _DropWeightsOnlyNote(logging.Filter):
    """Lightning says "`weights_only` was not set, defaulting to `False`" at every checkpoint save: the
    full checkpoint (optimizer, loops) is what resuming needs, so there is nothing to set."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`weights_only` was not set" not in str(record.msg)


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
    saver = logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector")
    if not any(isinstance(f, _DropWeightsOnlyNote) for f in saver.filters):
        saver.addFilter(_DropWeightsOnlyNote())


def build_trainer(cfg: DictConfig, layout: RunLayout, expected_world_size: int | None = None) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with loggers, callbacks and atomic checkpoint writes."""
    quiet_lightning()
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, layout, expected_world_size)
    return hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
