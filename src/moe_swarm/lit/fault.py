"""Fault tolerance: on SIGTERM, write last.ckpt at the next step boundary, then stop.

Lightning turns SIGTERM into ``SIGTERMException`` at the next batch boundary (all ranks agree);
this callback saves the full training state (model, optimizer, loops) to ``last.ckpt`` before the
process exits, so ``RUN_ID=<same id> moe-swarm-train ...`` resumes where it stopped. Lightning
writes checkpoints atomically (temporary file + rename), so a kill during the save leaves the
previous ``last.ckpt`` intact.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnSigterm(Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self.saved = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit" or self.saved:
            return
        trainer.save_checkpoint(self.path)
        self.saved = True
        if trainer.is_global_zero:
            log.warning("SIGTERM: saved %s at global step %d; stopping", self.path, trainer.global_step)
