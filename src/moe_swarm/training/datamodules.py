"""Lightning DataModules for byte-level language modelling and reasoning tasks (over moe_swarm.data).

Batches are dicts of ``(B, T)`` tensors: ``input_ids`` (long), ``targets`` (long, -100 =
no loss) and ``attention_mask`` (bool, False on padding). Worker processes, when asked
for, are started with ``spawn`` (never fork: forking a process that holds gRPC or CUDA
state can deadlock) and kept alive between epochs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from moe_swarm.data.corpora import BIN_DTYPE, load_corpus, read_bin, split_train_val
from moe_swarm.data.tasks import IGNORE_INDEX, SPLITS, Problem, Task, encode_problem, get_task
from moe_swarm.data.tokenizer import PAD_ID, VOCAB_SIZE, ByteTokenizer


class TokenSource:
    """A contiguous range of a token array, picklable cheaply into worker processes.

    In-memory tokens travel with the object; a ``.bin`` file travels as its path and
    is memory-mapped again in each process (pickling a memory map would copy it).
    """

    def __init__(
        self,
        tokens: torch.Tensor | None = None,
        bin_path: str | None = None,
        start: int = 0,
        length: int = -1,
    ) -> None:
        if (tokens is None) == (bin_path is None):
            raise ValueError("TokenSource needs exactly one of tokens or bin_path")
        self.tokens = tokens
        self.bin_path = bin_path
        self._mmap: np.ndarray | None = None
        total = tokens.numel() if tokens is not None else Path(bin_path).stat().st_size // BIN_DTYPE.itemsize
        self.start = start
        self.length = total - start if length < 0 else length
        if start < 0 or self.start + self.length > total:
            raise ValueError(
                f"range [{start}, {start + self.length}) is outside the {total} available tokens"
            )

    def __len__(self) -> int:
        return self.length

    def window(self, offset: int, size: int) -> torch.Tensor:
        """Tokens ``[offset, offset + size)`` of this range as a long tensor."""
        lo = self.start + offset
        if self.tokens is not None:
            return self.tokens[lo : lo + size].long()
        if self._mmap is None:
            self._mmap = np.memmap(self.bin_path, dtype=BIN_DTYPE, mode="r")
        return torch.from_numpy(self._mmap[lo : lo + size].astype(np.int64))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mmap"] = None
        return state


class WindowDataset(Dataset):
    """Fixed windows of ``block_size + 1`` tokens: inputs are the first T, targets the last T."""

    def __init__(self, source: TokenSource, starts: torch.Tensor, block_size: int) -> None:
        self.source = source
        self.starts = starts
        self.block_size = block_size

    def __len__(self) -> int:
        return self.starts.numel()

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        chunk = self.source.window(int(self.starts[index]), self.block_size + 1)
        return {
            "input_ids": chunk[:-1],
            "targets": chunk[1:],
            "attention_mask": torch.ones(self.block_size, dtype=torch.bool),
        }


def check_sizes(*, num_workers: int = 0, **sizes: int) -> None:
    """A DataModule's constructor check: every named size >= 1 and ``num_workers`` >= 0, with an error
    that names the setting, before any data is read."""
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")


class TextDataModule(L.LightningDataModule):
    """Byte-level LM windows from a named corpus (``pydoc``, ``stdlib``, ``files``) or a ``.bin``.

    Train: ``train_samples_per_epoch`` windows at seeded random offsets of the train region,
    visited in a new seeded order each epoch. Val: ``val_windows`` evenly spaced windows of
    the val region (the last ``val_fraction`` of the corpus, or ``val_bin_path`` when given).
    ``bin_path`` (or ``corpus="bin"`` with one path) takes precedence over ``corpus``; its ids
    are checked once against the byte vocabulary in ``setup``.
    """

    def __init__(
        self,
        corpus: str = "pydoc",
        paths: list[str] | None = None,
        bin_path: str | None = None,
        block_size: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        seed: int = 0,
        train_samples_per_epoch: int = 100_000,
        val_windows: int = 64,
        max_bytes: int | None = None,
        val_bin_path: str | None = None,
    ) -> None:
        super().__init__()
        check_sizes(
            num_workers=num_workers,
            block_size=block_size,
            batch_size=batch_size,
            train_samples_per_epoch=train_samples_per_epoch,
            val_windows=val_windows,
        )
        if train_samples_per_epoch < batch_size:
            raise ValueError(
                f"train_samples_per_epoch ({train_samples_per_epoch}) is smaller than batch_size ({batch_size}): "
                "an epoch would have no full batch"
            )
        if isinstance(paths, (str, os.PathLike)):  # a single path given on the command line
            paths = [os.fspath(paths)]
        if bin_path is not None and paths:
            raise ValueError("give either bin_path (a pre-tokenized .bin) or paths (text), not both")
        if corpus == "bin" and bin_path is None:  # corpus="bin", paths=[FILE] is the same as bin_path=FILE
            if not paths or len(paths) != 1:
                raise ValueError(
                    f"corpus 'bin' needs exactly one file in paths (or use bin_path), got {paths}"
                )
            bin_path, paths = paths[0], None
        if val_bin_path is not None and bin_path is None:
            raise ValueError("val_bin_path needs bin_path for the training tokens")
        self.save_hyperparameters()
        self.corpus = corpus
        self.paths = [os.fspath(p) for p in paths] if paths else None
        self.bin_path = os.fspath(bin_path) if bin_path is not None else None
        self.val_bin_path = os.fspath(val_bin_path) if val_bin_path is not None else None
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.seed = seed
        self.train_samples_per_epoch = train_samples_per_epoch
        self.val_windows = val_windows
        self.max_bytes = max_bytes
        self.train_set: WindowDataset | None = None
        self.val_set: WindowDataset | None = None

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_src, val_src = self._sources()
        need = self.block_size + 1
        for what, src in (("train", train_src), ("val", val_src)):
            if len(src) < need:
                raise ValueError(
                    f"the {what} region has {len(src)} tokens but one window needs block_size+1 = {need}; "
                    "lower block_size, use a larger corpus, or change val_fraction"
                )
        gen = torch.Generator().manual_seed(self.seed)
        train_starts = torch.randint(
            0, len(train_src) - need + 1, (self.train_samples_per_epoch,), generator=gen
        )
        val_starts = (
            torch.linspace(0, len(val_src) - need, self.val_windows, dtype=torch.float64).round().long()
        )
        self.train_set = WindowDataset(train_src, train_starts, self.block_size)
        self.val_set = WindowDataset(val_src, torch.unique_consecutive(val_starts), self.block_size)

    def _sources(self) -> tuple[TokenSource, TokenSource]:
        if self.bin_path is None:
            tokens = load_corpus(self.corpus, self.paths, self.max_bytes)
            train, val = split_train_val(tokens, self.val_fraction)
            return TokenSource(tokens=train.clone()), TokenSource(tokens=val.clone())
        train_len = _checked_bin_length(self.bin_path, self.max_bytes)
        if self.val_bin_path is not None:
            return (
                TokenSource(bin_path=self.bin_path, length=train_len),
                TokenSource(bin_path=self.val_bin_path, length=_checked_bin_length(self.val_bin_path, None)),
            )
        n_val = round(train_len * self.val_fraction)
        if not 0.0 < self.val_fraction < 1.0 or n_val < 1 or n_val >= train_len:
            raise ValueError(
                f"val_fraction={self.val_fraction} of {train_len} tokens leaves an empty train or val part; "
                "pick a value strictly between 0 and 1 or pass val_bin_path"
            )
        return (
            TokenSource(bin_path=self.bin_path, length=train_len - n_val),
            TokenSource(bin_path=self.bin_path, start=train_len - n_val, length=n_val),
        )

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed),
            drop_last=True,
            **_worker_kwargs(self.num_workers),
        )

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        return DataLoader(
            self.val_set, batch_size=self.batch_size, shuffle=False, **_worker_kwargs(self.num_workers)
        )

    def _require_setup(self) -> None:
        if self.train_set is None:
            raise RuntimeError("call setup() before asking for dataloaders (the Trainer does this for you)")


def _checked_bin_length(path: str, max_tokens: int | None) -> int:
    """Token count of a .bin after checking every id fits the byte vocabulary."""
    tokens = read_bin(path).numpy()
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    largest = int(tokens.max())
    if largest >= VOCAB_SIZE:
        raise ValueError(
            f"{path} holds token id {largest}, outside the byte vocabulary (< {VOCAB_SIZE}); "
            "it was made with another tokenizer - rebuild it with moe-swarm-prepare"
        )
    return int(tokens.size)


class ProblemDataset(Dataset):
    """Encoded problems as variable-length ``input_ids``/``targets`` lists."""

    def __init__(self, problems: list[Problem], tok: ByteTokenizer) -> None:
        self.problems = problems
        self.encoded = [encode_problem(p, tok) for p in problems]

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        input_ids, targets = self.encoded[index]
        return {"input_ids": input_ids, "targets": targets}


def pad_collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Right-pad a list of ``{"input_ids", "targets"}`` items into ``(B, T)`` tensors.

    ``input_ids`` are padded with PAD, ``targets`` with -100, ``attention_mask`` is False on pads.
    """
    if not batch:
        raise ValueError("pad_collate got an empty batch")
    width = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
    targets = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, item in enumerate(batch):
        n = len(item["input_ids"])
        if len(item["targets"]) != n:
            raise ValueError(f"item {row}: {n} input_ids but {len(item['targets'])} targets")
        input_ids[row, :n] = torch.as_tensor(item["input_ids"], dtype=torch.long)
        targets[row, :n] = torch.as_tensor(item["targets"], dtype=torch.long)
        attention_mask[row, :n] = True
    return {"input_ids": input_ids, "targets": targets, "attention_mask": attention_mask}


class TaskDataModule(L.LightningDataModule):
    """Exact-match reasoning problems (``mul``, ``reach``, ``arith``) as padded LM batches.

    The loss covers only the answer and EOS. ``eval_problems`` gives the fixed problem subset
    that generation-based exact-match evaluation should use.
    """

    def __init__(
        self,
        task: str = "mul",
        task_kwargs: dict | None = None,
        n_train: int = 50_000,
        n_val: int = 512,
        n_test: int = 1000,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        eval_subset: int = 256,
    ) -> None:
        super().__init__()
        check_sizes(
            num_workers=num_workers,
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            batch_size=batch_size,
            eval_subset=eval_subset,
        )
        self.save_hyperparameters()
        self.task: Task = get_task(task, **dict(task_kwargs or {}))
        self.tokenizer = ByteTokenizer()
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.eval_subset = eval_subset
        self.datasets: dict[str, ProblemDataset] = {}

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def setup(self, stage: str | None = None) -> None:
        """Generate and encode all three splits once (later calls are no-ops)."""
        if self.datasets:
            return
        for split in SPLITS:
            problems = self.task.generate(split, self.sizes[split], seed=self.seed)
            self.datasets[split] = ProblemDataset(problems, self.tokenizer)

    @property
    def max_len(self) -> int:
        """Longest ``input_ids`` over all splits: the context a model needs (prompt + answer, no EOS)."""
        self.setup()
        return max(len(ids) for ds in self.datasets.values() for ids, _ in ds.encoded)

    @property
    def max_answer_len(self) -> int:
        """Most tokens generation must produce: the longest answer plus its EOS."""
        self.setup()
        return max(len(p.answer.encode("utf-8")) + 1 for ds in self.datasets.values() for p in ds.problems)

    def eval_problems(self, split: str = "val", n: int | None = None) -> list[Problem]:
        """The first ``n`` (default ``eval_subset``) problems of a split: a fixed, seeded subset."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        self.setup()
        n = self.eval_subset if n is None else n
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return list(self.datasets[split].problems[:n])

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            collate_fn=pad_collate,
            **_worker_kwargs(self.num_workers),
        )


def _worker_kwargs(num_workers: int) -> dict[str, Any]:
    if num_workers == 0:
        return {"num_workers": 0}
    return {"num_workers": num_workers, "persistent_workers": True, "multiprocessing_context": "spawn"}
