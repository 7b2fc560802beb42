"""Lightning's ``ModelParallelStrategy`` with sharded checkpoints that a killed rank cannot corrupt.

Lightning writes a sharded ``last.ckpt`` in place: each rank overwrites its shard files, then rank 0
rewrites ``.metadata`` and ``meta.pt``. A rank killed in the middle (the case elastic restarts exist
for) leaves a folder whose index describes half-written shards, and the restarted group fails with
"PytorchStreamReader failed reading zip archive". Here every rank writes into ``<path>.partial``
and rank 0 swaps it in once the save is complete (:func:`moe_swarm.store.sharded.write_sharded`),
so the previous checkpoint stays whole until the new one is. Everything else is Lightning's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy

from moe_swarm.store.sharded import MODEL_KEY, write_sharded

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
        state = {MODEL_KEY: checkpoint.pop("state_dict")}
        for index, optimizer_state in enumerate(checkpoint.pop("optimizer_states", [])):
            state[f"optimizer_{index}"] = optimizer_state
        write_sharded(path, state, checkpoint, barrier=self.barrier)  # the rest of checkpoint is meta.pt
