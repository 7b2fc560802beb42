"""``TokenDataModule``: packed batches streamed from ``moe-swarm-prepare`` shards, resumed exactly.

The order of batches is :mod:`moe_swarm.data.packing`'s pure function of (seed, epoch, position), so
the loader's state is small: the epoch and the next batch of the last batch the model trained on.
:class:`ResumableLoader` exposes it as ``state_dict``/``load_state_dict``, which Lightning's fit
loop saves in every checkpoint (``loops.fit_loop.state_dict.combined_loader``) and restores before
iterating. Lightning prefetches a batch, so the position is taken from the batch that reaches
``on_before_batch_transfer`` (the one about to be trained), not from the loader's own progress.
The position is the same number on every rank (sequences used by all ranks together), so rank 0's
copy in the checkpoint is every rank's, on the same or another world size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from moe_swarm.data.packing import (
    DocTable,
    PackedSequences,
    PackedStream,
    Position,
    check_mixture,
    split_documents,
)
from moe_swarm.data.shards import load_shards, read_manifest
from moe_swarm.errors import UserError
from moe_swarm.training.datamodules import _worker_kwargs, check_sizes

POSITION_KEYS = ("epoch", "sequences")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """The data layer's ValueErrors (bad manifest, mixture, shards) as UserError: data/ sits beside
    errors.py on floor 0 and cannot raise it itself."""
    try:
        yield
    except ValueError as exc:
        raise UserError(str(exc)) from None


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`PackedStream` whose position is checkpointed and restored.

    It has no length (Lightning then ends an epoch when the stream does). Workers are persistent:
    each later pass of a worker's copy of the stream is the next epoch.
    """

    def __init__(self, stream: PackedStream, num_workers: int, fingerprint: str) -> None:
        super().__init__(stream, batch_size=None, **_worker_kwargs(num_workers))
        self.stream = stream
        self.fingerprint = fingerprint
        self.trained: dict = {"epoch": 0, "sequences": 0}  # the position after the last trained batch
        self._started = False

    def __iter__(self):
        self._started = True  # the position now travels with the stream into the workers
        return super().__iter__()

    def record(self, batch: dict) -> dict:
        """Note the position after a batch about to be trained; drop the position keys from it."""
        self.trained = {k: int(batch.pop(k)) for k in POSITION_KEYS}
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.trained,
            "world_size": self.stream.world_size,
            "seed": self.stream.seed,
            "tokenizer": self.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("tokenizer") != self.fingerprint:
            raise UserError(
                f"the checkpoint's data was tokenized with {state.get('tokenizer')}, this data with "
                f"{self.fingerprint}: resuming would change the token stream; use the same prepared data"
            )
        if state.get("seed") != self.stream.seed:
            raise UserError(
                f"the checkpoint's data.seed was {state.get('seed')}, now {self.stream.seed}: the order would change"
            )
        if self._started:
            raise RuntimeError(
                "load_state_dict after the loader started: its workers already hold the old position"
            )
        self.stream.seek(state)
        self.trained = {k: int(state[k]) for k in POSITION_KEYS}


class TokenDataModule(L.LightningDataModule):
    """Packed LM batches from a prepared folder (``manifest.json`` + ``shards/``).

    ``mixture`` maps source names to weights (passes per epoch: 1 = every document once);
    ``packing.mask_documents`` adds ``document_ids`` so attention stays inside each document and
    positions restart. The validation set is ``val_fraction`` of the documents, held out whole.
    """

    def __init__(
        self,
        path: str,
        block_size: int = 128,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.01,
        val_windows: int = 64,
        mixture: dict[str, float] | None = None,
        packing: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_sizes(
            num_workers=num_workers, block_size=block_size, batch_size=batch_size, val_windows=val_windows
        )
        packing = dict(packing or {})
        unknown = set(packing) - {"mask_documents"}
        if unknown:
            raise UserError(f"data.packing: unknown key(s) {sorted(unknown)}; known: mask_documents")
        self.save_hyperparameters()
        self.path = str(Path(path).expanduser())
        self.block_size, self.batch_size, self.num_workers, self.seed = (
            block_size,
            batch_size,
            num_workers,
            seed,
        )
        self.val_fraction, self.val_windows = val_fraction, val_windows
        self.mask_documents = bool(packing.get("mask_documents", False))
        with user_errors():
            self.manifest = read_manifest(self.path)
            self.sources = [s["name"] for s in self.manifest["sources"]]
            self.weights = check_mixture(dict(mixture or {}), self.sources)
        self.train_stream: PackedStream | None = None
        self.val_set: PackedSequences | None = None
        self.train_loader: ResumableLoader | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["tokenizer"]["fingerprint"])

    def check_tokenizer(self, module: Any) -> None:
        """Refuse a model whose tokenizer (fingerprint) or vocabulary does not fit this data."""
        tokenizer = getattr(module, "tokenizer", None)
        if tokenizer is not None and tokenizer.fingerprint() != self.fingerprint:
            raise UserError(
                f"{self.path}: the data was tokenized with {self.manifest['tokenizer']['spec']} "
                f"(fingerprint {self.fingerprint}), the model uses {tokenizer!r} (fingerprint "
                f"{tokenizer.fingerprint()}); prepare the data with the model's tokenizer"
            )
        model_vocab = getattr(getattr(getattr(module, "model", None), "cfg", None), "vocab_size", None)
        if model_vocab is not None and model_vocab < self.vocab_size:
            raise UserError(
                f"{self.path}: the data's vocabulary has {self.vocab_size} ids, model.vocab_size={model_vocab}; "
                f"set model.vocab_size={self.vocab_size} or more"
            )

    def setup(self, stage: str | None = None) -> None:
        if self.train_stream is not None:
            return
        rank, world = 0, 1
        if self.trainer is not None:
            self.check_tokenizer(self.trainer.lightning_module)
            rank, world = self.trainer.global_rank, self.trainer.world_size
        with user_errors():
            shards = load_shards(self.path, self.manifest)
            docs = DocTable.from_shards(shards, self.sources)
            train_rows, val_rows = split_documents(len(docs), self.val_fraction)
        common = dict(
            block_size=self.block_size,
            batch_size=self.batch_size,
            seed=self.seed,
            eos_id=int(self.manifest["tokenizer"]["eos_id"]),
            mask_documents=self.mask_documents,
        )
        self.train_stream = PackedStream(
            shards, docs.subset(train_rows), self.weights, rank=rank, world_size=world, **common
        )
        if self.train_stream.epoch_batches(Position()) < 1:
            raise UserError(
                f"{self.path}: the training documents do not fill one batch per rank "
                f"({world} ranks x {self.batch_size} x {self.block_size + 1} tokens)"
            )
        if val_rows.size:
            val_stream = PackedStream(shards, docs.subset(val_rows), self.weights[:0], **common)
            with user_errors():
                self.val_set = PackedSequences(val_stream, self.val_windows)

    def train_dataloader(self) -> ResumableLoader:
        self._require_setup()
        self.train_loader = ResumableLoader(self.train_stream, self.num_workers, self.fingerprint)
        return self.train_loader

    def val_dataloader(self) -> DataLoader | list:
        self._require_setup()
        if self.val_set is None:
            return []
        # val_windows sequences read from memory-mapped shards: worker processes would take longer to
        # start (a spawned interpreter each, per rank, per validation) than they save.
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=0)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "sequences" in batch and self.train_loader is not None:
            return self.train_loader.record(batch)
        return batch

    def _require_setup(self) -> None:
        if self.train_stream is None:
            raise RuntimeError("call setup() before asking for dataloaders (the Trainer does this for you)")
