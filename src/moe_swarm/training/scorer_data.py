"""The datamodules of scorer training; each serves what its label source gives it, never the module.

``ProblemDataModule`` serves batches of task problems (the value head's labels are made online, by
rolling the swarm out on each batch); ``StepRolloutDataModule`` rolls the generator out once
(``setup``) and serves batches of labelled step proposals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from moe_swarm.data.tasks import Problem
from moe_swarm.swarm import StepRollouts, StepSwarmConfig

if TYPE_CHECKING:  # what the datamodules read of them: .task; .collect and .encode_rows
    from moe_swarm.training.answer_labels import AnswerLabels
    from moe_swarm.training.step_labels import StepLabels


def _check_sizes(**sizes: object) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _list_collate(batch: list[Problem]) -> list[Problem]:
    return list(batch)


class ProblemDataModule(L.LightningDataModule):
    """Batches of task ``Problem``s (plain lists): the swarm encodes prompts itself.

    ``train`` problems feed the rollouts the value head learns from; a fixed ``val`` subset measures
    it. Both are generated from ``seed`` and are disjoint by the task's split hashing.
    """

    def __init__(
        self,
        labels: AnswerLabels,
        n_train: int = 4096,
        n_val: int = 128,
        batch_size: int = 16,
        val_batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes(n_train=n_train, n_val=n_val, batch_size=batch_size, val_batch_size=val_batch_size)
        self.task = labels.task
        self.n_train, self.n_val = n_train, n_val
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.seed = seed
        self.problems: dict[str, list[Problem]] = {}

    def setup(self, stage: str | None = None) -> None:
        if not self.problems:
            self.problems = {
                "train": self.task.generate("train", self.n_train, seed=self.seed),
                "val": self.task.generate("val", self.n_val, seed=self.seed),
            }

    def train_dataloader(self) -> DataLoader:
        self.setup()
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.problems["train"],
            batch_size=self.batch_size,
            shuffle=True,
            generator=gen,
            collate_fn=_list_collate,
        )

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(
            self.problems["val"], batch_size=self.val_batch_size, shuffle=False, collate_fn=_list_collate
        )


class StepRolloutDataModule(L.LightningDataModule):
    """Labelled step proposals from the generator's own step-swarm rollouts (train problems for
    training, val problems for validation), labelled by the task's exact step oracle.

    Rollouts run once in ``setup``: every agent proposes every step (``rollout`` = StepSwarmConfig
    fields; early commit and backtracking off by default, so each group holds all ``num_agents``
    proposals), the trajectory follows the plurality winner.
    """

    def __init__(
        self,
        labels: StepLabels,
        n_train: int = 512,
        n_val: int = 128,
        batch_size: int = 64,
        seed: int = 0,
        rollout: dict | DictConfig | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(n_train=n_train, n_val=n_val, batch_size=batch_size)
        self.labels, self.n_train, self.n_val, self.batch_size, self.seed = (
            labels,
            n_train,
            n_val,
            batch_size,
            seed,
        )
        defaults = {"num_agents": 8, "wave_agents": 8, "commit_share": 2.0, "max_backtracks": 0}
        if isinstance(rollout, DictConfig):
            rollout = OmegaConf.to_container(rollout, resolve=True)
        self.rollout_cfg = StepSwarmConfig.from_dict({**defaults, **dict(rollout or {})})
        self.rollouts: dict[str, StepRollouts] = {}

    def setup(self, stage: str | None = None) -> None:
        if not self.rollouts:
            self.rollouts = self.labels.collect(
                self.rollout_cfg, {"train": self.n_train, "val": self.n_val}, self.seed
            )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        ro = self.rollouts[split]
        gen = torch.Generator().manual_seed(self.seed)
        # train on proposals made after a right prefix: the oracle labels everything after a wrong step
        # wrong, which would teach the checker to spot wrong prefixes instead of ranking proposals
        rows = ro.prefix_ok.nonzero().squeeze(1).tolist() if split == "train" else list(range(len(ro)))
        return DataLoader(
            rows,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=gen,
            collate_fn=lambda rows: self.labels.encode_rows(ro, rows),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)
