"""Packed, exactly resumable sequences over prepared token shards (plain PyTorch).

The stream of an epoch is a pure function of (seed, epoch, mixture), cut into sequences:

- Documents are split once into train and validation by a seeded draw (whole documents).
- Each epoch takes ``round(weight * documents)`` of every source (weight 1: each document once,
  2: twice, 0.5: a random half), shuffled together with a generator seeded by (seed, epoch).
- The epoch's stream is its documents joined with EOS after each. Sequence ``j`` is tokens
  ``[j*T, j*T + T + 1)`` (inputs the first T, targets the last T), so every token is a target once.
- Rank ``r`` of ``W`` reads sequences ``j = S + i*W + r`` (``S``: sequences used before this start):
  the ranks read disjoint parts, and batch ``b`` of a rank is its sequences ``[b*B, (b+1)*B)``.

So the position is two numbers, (epoch, sequences used by all ranks together), the same on every
rank. Dataloader worker ``w`` of ``N`` makes batches ``w``, ``w + N``, ... which the DataLoader
interleaves back into order. A run resumed on another world size continues the same stream at the
same sequence: no token is seen twice (or skipped) within an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from moe_swarm.data.shards import Shard


@dataclass
class DocTable:
    """Every document as (shard, start, length, source index), in manifest order."""

    shard: np.ndarray
    start: np.ndarray
    length: np.ndarray
    source: np.ndarray

    @classmethod
    def from_shards(cls, shards: list[Shard], source_names: list[str]) -> DocTable:
        index = {name: i for i, name in enumerate(source_names)}
        parts = [
            (
                np.full(s.documents, k),
                s.offsets[:-1].astype(np.int64),
                np.diff(s.offsets).astype(np.int64),
                np.full(s.documents, index[s.source]),
            )
            for k, s in enumerate(shards)
        ]
        return cls(*(np.concatenate([p[i] for p in parts]) for i in range(4)))

    def subset(self, rows: np.ndarray) -> DocTable:
        return DocTable(self.shard[rows], self.start[rows], self.length[rows], self.source[rows])

    def __len__(self) -> int:
        return int(self.shard.size)


def split_documents(n_docs: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows): a seeded draw of ``round(n * val_fraction)`` whole documents (>= 1 when
    the fraction is above 0), the same for every training seed."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={val_fraction}: must be in [0, 1)")
    n_val = max(1, round(n_docs * val_fraction)) if val_fraction > 0 else 0
    if n_val >= n_docs and n_val:
        raise ValueError(
            f"data.val_fraction={val_fraction} of {n_docs} documents leaves no training documents"
        )
    perm = np.random.default_rng([seed, 0x5EED]).permutation(n_docs)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def check_mixture(mixture: dict | None, sources: list[str]) -> np.ndarray:
    """Per-source weights in manifest order (missing sources weigh 0, ``None`` = all 1)."""
    if not mixture:
        return np.ones(len(sources))
    for name, weight in mixture.items():
        if name not in sources:
            raise ValueError(f"data.mixture.{name}: no such source; the data has {', '.join(sources)}")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
            raise ValueError(
                f"data.mixture.{name}={weight!r}: a weight must be a number > 0 (leave a source out to skip it)"
            )
    return np.array([float(mixture.get(name, 0.0)) for name in sources])


@dataclass
class Position:
    """Where the stream stands: the epoch and how many of its sequences all ranks together have used."""

    epoch: int = 0
    sequences: int = 0


class PackedStream(IterableDataset):
    """Batches of packed sequences for one rank; see the module docstring for the order."""

    def __init__(
        self,
        shards: list[Shard],
        docs: DocTable,
        weights: np.ndarray,
        *,
        block_size: int,
        batch_size: int,
        eos_id: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        mask_documents: bool = False,
    ) -> None:
        self.shards, self.docs, self.weights = shards, docs, weights
        self.block_size, self.batch_size, self.eos_id, self.seed = block_size, batch_size, eos_id, seed
        self.rank, self.world_size, self.mask_documents = rank, world_size, mask_documents
        self.position = Position()
        self._passes = 0
        self._tokens: list[np.ndarray] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tokens"] = None  # memory maps are opened again in each worker
        return state

    # ---- the plan -------------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        """Rows of ``docs`` the epoch visits, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        picked = []
        for s, weight in enumerate(self.weights):
            rows = np.flatnonzero(self.docs.source == s)
            n = round(weight * rows.size)
            if n:
                picked.append(rows[np.resize(rng.permutation(rows.size), n)])
        order = np.concatenate(picked) if picked else np.zeros(0, np.int64)
        return order[rng.permutation(order.size)]

    def layout(self, rows: np.ndarray) -> tuple[np.ndarray, int]:
        """Stream end offset of each document (its EOS included) and the number of whole sequences."""
        ends = np.cumsum(self.docs.length[rows] + 1)
        total = int(ends[-1]) if ends.size else 0
        return ends, max(0, (total - 1) // self.block_size)

    def batches_left(self, epoch_sequences: int, position: Position) -> int:
        """Batches each rank still gets in this epoch after ``position``."""
        return max(0, epoch_sequences - position.sequences) // (self.world_size * self.batch_size)

    def epoch_batches(self, position: Position) -> int:
        """Batches each rank gets from ``position`` to the end of its epoch."""
        return self.batches_left(self.layout(self.epoch_order(position.epoch))[1], position)

    def seek(self, state: dict | None) -> None:
        """Start at a saved position (``{"epoch", "sequences"}`` from a run on any world size); a
        finished epoch moves on to the next one."""
        if state is None:
            return
        position = Position(int(state["epoch"]), int(state["sequences"]))
        self.position = position if self.epoch_batches(position) > 0 else Position(position.epoch + 1)

    # ---- reading ------------------------------------------------------------------------------------
    def _open(self) -> list[np.ndarray]:
        if self._tokens is None:
            self._tokens = [s.tokens() for s in self.shards]
        return self._tokens

    def _sequence(self, rows: np.ndarray, ends: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and document numbers of stream positions ``[j*T, j*T + T + 1)``."""
        tokens = self._open()
        lo, hi = j * self.block_size, j * self.block_size + self.block_size + 1
        k = int(np.searchsorted(ends, lo, side="right"))
        out, ids, pos = [], [], lo
        while pos < hi:
            row = rows[k]
            length = int(self.docs.length[row])
            inner = pos - int(ends[k]) + length + 1
            take = min(hi - pos, length + 1 - inner)
            first = int(self.docs.start[row])
            piece = np.asarray(
                tokens[self.docs.shard[row]][first + inner : first + min(inner + take, length)], np.int64
            )
            if inner + take > length:  # the EOS that ends this document
                piece = np.append(piece, self.eos_id)
            out.append(piece)
            ids.append(np.full(piece.size, k, dtype=np.int64))
            pos += take
            k += 1
        return np.concatenate(out), np.concatenate(ids)

    def make_batch(self, rows: np.ndarray, ends: np.ndarray, indices: list[int]) -> dict[str, torch.Tensor]:
        seqs = [self._sequence(rows, ends, j) for j in indices]
        chunk = torch.from_numpy(np.stack([s for s, _ in seqs]))
        batch = {
            "input_ids": chunk[:, :-1],
            "targets": chunk[:, 1:].clone(),
            "attention_mask": torch.ones(len(indices), self.block_size, dtype=torch.bool),
        }
        if self.mask_documents:
            doc = torch.from_numpy(np.stack([d for _, d in seqs]))[:, :-1]
            batch["document_ids"] = doc - doc[:, :1]
        return batch

    def __iter__(self):
        """This pass's batches for this rank (and, in a DataLoader worker, this worker's share). The
        first pass starts at ``position``; each later pass (persistent workers) is the next epoch."""
        start = self.position if self._passes == 0 else Position(self.position.epoch + self._passes)
        self._passes += 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rows = self.epoch_order(start.epoch)
        ends, count = self.layout(rows)
        step = self.world_size * self.batch_size  # sequences all ranks use per batch
        for b in range(worker, self.batches_left(count, start), workers):
            first = start.sequences + b * step
            indices = [first + i * self.world_size + self.rank for i in range(self.batch_size)]
            batch = self.make_batch(rows, ends, indices)
            batch["epoch"] = torch.tensor(start.epoch)
            batch["sequences"] = torch.tensor(first + step)  # used by all ranks once this batch is trained
            yield batch


class PackedSequences(Dataset):
    """Validation: the first ``limit`` packed sequences of the held-out documents, in document order."""

    def __init__(self, stream: PackedStream, limit: int) -> None:
        self.stream = stream
        self.rows = np.arange(len(stream.docs))
        self.ends, count = stream.layout(self.rows)
        self.count = min(limit, count)
        if self.count < 1:
            raise ValueError(
                f"the validation documents hold {int(self.ends[-1]) if self.ends.size else 0} tokens, "
                f"less than one sequence of block_size+1={stream.block_size + 1}; raise data.val_fraction"
            )

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        tokens, doc = self.stream._sequence(self.rows, self.ends, j)
        t = torch.from_numpy(tokens)
        item = {
            "input_ids": t[:-1],
            "targets": t[1:].clone(),
            "attention_mask": torch.ones(t.numel() - 1, dtype=torch.bool),
        }
        if self.stream.mask_documents:
            d = torch.from_numpy(doc)[:-1]
            item["document_ids"] = d - d[0]
        return item
