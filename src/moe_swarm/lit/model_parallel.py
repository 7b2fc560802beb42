"""Lightning's ``ModelParallelStrategy`` with sharded checkpoints that a killed rank cannot corrupt.

Lightning writes a sharded ``last.ckpt`` in place: each rank overwrites its shard files, then rank 0
rewrites ``.metadata`` and ``meta.pt``. A rank killed in the middle (the case elastic restarts exist
for) leaves a folder whose index describes half-written shards, and the restarted group fails with
"PytorchStreamReader failed reading zip archive". Here every rank writes into ``<path>.partial``
and rank 0 swaps it in once the save is complete (:func:`moe_swarm.parallel.checkpoint.publish_sharded`),
so the previous checkpoint stays whole until the new one is. Everything else is Lightning's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed.checkpoint as dcp
from lightning.pytorch.strategies import ModelParallelStrategy

from moe_swarm.atomic import atomic_torch_save
from moe_swarm.parallel.checkpoint import (
    META_FILENAME,
    MODEL_KEY,
    prepare_sharded_save,
    publish_sharded,
    staging_path,
)

__all__ = ["AtomicModelParallelStrategy"]


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` whose sharded saves are published atomically (module docstring)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not self._save_distributed_checkpoint:
            super().save_checkpoint(checkpoint, filepath, storage_options)  # single file / its own error
            return
        path = Path(self.broadcast(filepath))  # rank 0's path: every rank writes into the same folder
        staging = prepare_sharded_save(path) if self.global_rank == 0 else staging_path(path)
        self.barrier("moe_swarm_sharded_save_begin")
        staging.mkdir(parents=True, exist_ok=True)
        state = {MODEL_KEY: checkpoint.pop("state_dict")}
        for index, optimizer_state in enumerate(checkpoint.pop("optimizer_states", [])):
            state[f"optimizer_{index}"] = optimizer_state
        dcp.save(state, checkpoint_id=staging)  # returns on rank 0 once every rank's shards are written
        if self.global_rank == 0:
            atomic_torch_save(checkpoint, staging / META_FILENAME)
            publish_sharded(path)
        self.barrier("moe_swarm_sharded_save_end")
