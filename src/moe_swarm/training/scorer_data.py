"""The datamodules of scorer training; each serves what its label source gives it, never the module.

``ProblemDataModule`` serves batches of task problems (the value head's labels are made online, by
rolling the swarm out on each batch); ``StepRolloutDataModule`` rolls the generator out once
(``setup``) and serves batches of labelled step proposals.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler

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

    Round 0 runs in ``setup``: every agent proposes every step (``rollout`` = StepSwarmConfig fields;
    early commit and backtracking off by default, so each group holds all ``num_agents`` proposals),
    the trajectory follows the plurality winner. Training rows are the proposals after a right prefix,
    weighted 1; ``hard_negative_weight`` weights the wrong proposals a plurality picked over a right one,
    ``wrong_prefix_weight`` (0: left out) the proposals after a wrong step (all labelled wrong).

    ``group_batches``: each batch holds whole vote groups (all proposals of one step of one problem),
    so a within-group ranking loss (``module.rank_weight``) has pairs to rank; groups are shuffled and
    packed until a batch has ``batch_size`` rows.

    ``rounds`` > 0 adds on-policy rounds: each epoch is one round of ``round_batches`` batches drawn
    from the pool of every round so far, and at the start of epoch ``r`` (1..rounds) ``round_problems``
    train problems (drawn with ``seed + 1000 r``: mostly new ones) are rolled out with the checker
    being trained voting by ``round_vote`` (it chooses the trajectory), labelled, and added to the pool.
    Validation rows stay round 0's, so the rounds are compared on the same proposals. A resumed run re-collects round 0 and, with the restored
    checker, the round it resumes in.
    """

    def __init__(
        self,
        labels: StepLabels,
        n_train: int = 512,
        n_val: int = 128,
        batch_size: int = 64,
        seed: int = 0,
        rollout: dict | DictConfig | None = None,
        hard_negative_weight: float = 1.0,
        wrong_prefix_weight: float = 0.0,
        rounds: int = 0,
        round_batches: int | None = None,
        round_problems: int | None = None,
        round_vote: str = "checker_odds",
        group_batches: bool = False,
    ) -> None:
        super().__init__()
        _check_sizes(n_train=n_train, n_val=n_val, batch_size=batch_size)
        for name, w in (
            ("hard_negative_weight", hard_negative_weight),
            ("wrong_prefix_weight", wrong_prefix_weight),
        ):
            if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0:
            raise ValueError(f"rounds must be an integer >= 0 (0: no on-policy rounds), got {rounds!r}")
        if rounds:
            if round_batches is None:
                raise ValueError("on-policy rounds need round_batches (training batches per round)")
            _check_sizes(round_batches=round_batches, round_problems=round_problems or n_train)
            if not round_vote.startswith("checker"):
                raise ValueError(
                    f"round_vote must let the checker choose the trajectory (checker or checker_odds), got {round_vote!r}"
                )
        self.labels, self.n_train, self.n_val, self.batch_size, self.seed = (
            labels,
            n_train,
            n_val,
            batch_size,
            seed,
        )
        self.hard_negative_weight, self.wrong_prefix_weight = (
            float(hard_negative_weight),
            float(wrong_prefix_weight),
        )
        self.rounds, self.round_batches = rounds, round_batches
        self.group_batches = bool(group_batches)
        self.round_problems = round_problems or n_train
        defaults = {"num_agents": 8, "wave_agents": 8, "commit_share": 2.0, "max_backtracks": 0}
        if isinstance(rollout, DictConfig):
            rollout = OmegaConf.to_container(rollout, resolve=True)
        self.rollout_cfg = StepSwarmConfig.from_dict({**defaults, **dict(rollout or {})})
        self.round_cfg = self.rollout_cfg.replace(vote=round_vote) if rounds else None
        self.rollouts: dict[str, StepRollouts] = {}
        self.collected: set[int] = set()  # the rounds in the training pool
        self.current_round = 0

    def setup(self, stage: str | None = None) -> None:
        if not self.rollouts:
            self.rollouts = self.labels.collect(
                self.rollout_cfg, {"train": self.n_train, "val": self.n_val}, self.seed
            )
            self.collected = {0}

    def row_weights(self, ro: StepRollouts) -> Tensor:
        """Each training row's weight: 1 after a right prefix, ``hard_negative_weight`` for a wrong step
        a plurality picked, ``wrong_prefix_weight`` after a wrong step."""
        w = torch.where(ro.prefix_ok, 1.0, self.wrong_prefix_weight)
        return torch.where(ro.hard_negative, self.hard_negative_weight, w)

    def _check_schedule(self) -> None:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(
                "on-policy rounds collect new rollouts at every epoch: set trainer.reload_dataloaders_every_n_epochs=1 "
                "(swarm_objective=step_checker_on_policy does)"
            )
        need = (self.rounds + 1) * self.round_batches
        if 0 < trainer.max_steps < need:
            raise ValueError(
                f"trainer.max_steps={trainer.max_steps} ends before the last of data.rounds={self.rounds} on-policy "
                f"rounds: each round is data.round_batches={self.round_batches} steps; set trainer.max_steps={need}"
            )

    def _next_round(self) -> int:
        """The round this epoch trains on, collecting it first if it is a new on-policy round."""
        epoch = self.trainer.current_epoch if getattr(self, "trainer", None) is not None else 0
        r = min(epoch, self.rounds)
        if r not in self.collected:
            ro = self.labels.collect_round(self.round_cfg, self.round_problems, self.seed + 1000 * r, r)
            self.rollouts["train"] = self.rollouts["train"].extended(ro)
            self.collected.add(r)
        return r

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        if split == "train":
            if self.rounds:
                self._check_schedule()
            self.current_round = self._next_round() if self.rounds else 0
            self.labels.round = self.current_round
        ro = self.rollouts[split]
        gen = torch.Generator().manual_seed(self.seed + self.current_round)
        weights = None
        if split == "train":
            # by default train on proposals made after a right prefix: the oracle labels everything after
            # a wrong step wrong, which would teach the checker to spot wrong prefixes instead of ranking
            # proposals (wrong_prefix_weight > 0 takes them in, as negatives)
            weights = self.row_weights(ro)
            rows = (weights > 0).nonzero().squeeze(1).tolist()
            if self.hard_negative_weight == 1.0 and self.wrong_prefix_weight == 0.0:
                weights = None  # every row alike: the plain mean
        else:
            rows = list(range(len(ro)))

        def collate(batch: list[int]) -> dict[str, Tensor]:
            return self.labels.encode_rows(ro, batch, weights)

        if split == "train" and self.group_batches:  # whole vote groups per batch: ranking pairs
            n_batches = self.round_batches if self.rounds else None
            batches = pack_groups(ro.groups, rows, self.batch_size, n_batches, gen)
            return DataLoader(batches, batch_size=None, collate_fn=collate)
        if split == "train" and self.rounds:  # one round: round_batches batches drawn from the pool
            sampler = RandomSampler(rows, num_samples=self.round_batches * self.batch_size, generator=gen)
            return DataLoader(rows, batch_size=self.batch_size, sampler=sampler, collate_fn=collate)
        return DataLoader(
            rows, batch_size=self.batch_size, shuffle=shuffle, generator=gen, collate_fn=collate
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)


def pack_groups(
    groups: Tensor, rows: list[int], batch_size: int, n_batches: int | None, gen: torch.Generator
) -> list[list[int]]:
    """``rows`` in batches of whole groups (``groups[row]``), groups in shuffled order, each batch closed
    once it holds ``batch_size`` rows: one pass over the groups (``n_batches`` None) or exactly
    ``n_batches`` batches, reshuffling at the end of each pass."""
    by_group: dict[int, list[int]] = {}
    for r in rows:
        by_group.setdefault(int(groups[r]), []).append(r)
    members = list(by_group.values())
    if not members:
        raise ValueError("no training rows to batch: the rollouts hold no proposal with a training weight")
    batches: list[list[int]] = []
    current: list[int] = []
    while True:
        for k in torch.randperm(len(members), generator=gen).tolist():
            current.extend(members[k])
            if len(current) >= batch_size:
                batches.append(current)
                current = []
                if n_batches is not None and len(batches) == n_batches:
                    return batches
        if n_batches is None:
            return batches + ([current] if current else [])
