"""A callback for the data resume tests, imported by training child processes (PYTHONPATH=tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L


class TokenRecorder(L.Callback):
    """Appends the token ids each rank trains on, per global step, to ``<dirpath>/rank<R>.jsonl``;
    with ``exit_at_step`` every rank dies abruptly (``os._exit``, no checkpoint) before that step."""

    def __init__(self, dirpath: str, exit_at_step: int | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.exit_at_step = exit_at_step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        if self.exit_at_step is not None and trainer.global_step == self.exit_at_step:
            os._exit(137)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        record = {"step": trainer.global_step, "input_ids": batch["input_ids"].tolist()}
        with open(self.dirpath / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def read_steps(dirpath: Path, rank: int) -> dict[int, list]:
    """step -> token ids (a later record of a step replaces an earlier one: the resumed run's)."""
    steps = {}
    for line in (dirpath / f"rank{rank}.jsonl").read_text().splitlines():
        record = json.loads(line)
        steps[record["step"]] = record["input_ids"]
    return steps
