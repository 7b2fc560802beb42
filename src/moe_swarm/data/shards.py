"""The on-disk format of prepared token data: shards, their document index, and ``manifest.json``.

A prepared folder holds ``manifest.json`` and ``shards/<source>-<n>.tokens`` (raw little-endian
uint16, or uint32 when the vocabulary has more than 65,536 ids), ``.docs`` (uint64 offsets, one
more than the documents: document ``i`` is ``tokens[docs[i]:docs[i+1]]``, without EOS) and
``.json`` (the shard's counts; written last, it marks the shard finished). Every file is written
to a temporary name and renamed, so a killed writer never leaves a torn file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moe_swarm.atomic import atomic_write_bytes

MANIFEST = "manifest.json"
FORMAT = "moe-swarm-tokens/1"
SHARD_DIR = "shards"
OFFSET_DTYPE = np.dtype("<u8")


class ShardError(ValueError):
    """Prepared data that does not match its manifest (missing, truncated or foreign shards)."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab <= 65,536), else uint32; always little-endian."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files a killed writer left in ``folder``."""
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def json_bytes(obj: object) -> bytes:
    """Canonical JSON (sorted keys, fixed indent): the same data gives the same bytes."""
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def write_shard(folder: Path, name: str, docs: list[np.ndarray], dtype: np.dtype, meta: dict) -> dict:
    """Write one shard's tokens, index and marker (in that order); return the marker's content."""
    lengths = np.fromiter((d.size for d in docs), dtype=np.int64, count=len(docs))
    offsets = np.zeros(len(docs) + 1, dtype=OFFSET_DTYPE)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(docs).astype(dtype, copy=False) if docs else np.zeros(0, dtype)
    token_bytes = tokens.tobytes()
    atomic_write_bytes(folder / f"{name}.tokens", token_bytes)
    atomic_write_bytes(folder / f"{name}.docs", offsets.tobytes())
    info = {
        **meta,
        "name": name,
        "tokens": int(tokens.size),
        "documents": len(docs),
        "sha256": hashlib.sha256(token_bytes).hexdigest(),
    }
    atomic_write_bytes(folder / f"{name}.json", json_bytes(info))
    return info


def finished_shard(folder: Path, name: str, plan_hash: str, itemsize: int) -> dict | None:
    """The marker of a shard already written for this plan (files present, sizes right), else None."""
    marker = folder / f"{name}.json"
    try:
        info = json.loads(marker.read_text())
        if info.get("plan") != plan_hash:
            return None
        if (folder / f"{name}.tokens").stat().st_size != info["tokens"] * itemsize:
            return None
        if (folder / f"{name}.docs").stat().st_size != (info["documents"] + 1) * OFFSET_DTYPE.itemsize:
            return None
        return info
    except (OSError, ValueError, KeyError):
        return None


@dataclass(frozen=True)
class Shard:
    """One shard as the loader sees it: its token memmap and document offsets."""

    source: str
    tokens_path: str
    offsets: np.ndarray  # uint64, documents + 1
    dtype: str

    @property
    def documents(self) -> int:
        return self.offsets.size - 1

    def tokens(self) -> np.ndarray:
        return np.memmap(self.tokens_path, dtype=np.dtype(self.dtype), mode="r")


def read_manifest(folder: str | os.PathLike) -> dict:
    """Load ``manifest.json`` of a prepared folder (a clear error when it is not one)."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardError(
            f"{path}: no manifest; prepare the data with moe-swarm-prepare --out-dir {folder}"
        ) from None
    except ValueError as exc:
        raise ShardError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: key 'format' is {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def load_shards(folder: str | os.PathLike, manifest: dict) -> list[Shard]:
    """Open every shard the manifest lists, checking each file exists and has the recorded size."""
    root = Path(folder) / SHARD_DIR
    dtype = np.dtype(manifest["dtype"])
    shards = []
    for i, entry in enumerate(manifest["shards"]):
        where = f"{Path(folder) / MANIFEST}: shards[{i}] ({entry['name']})"
        tokens, docs = root / f"{entry['name']}.tokens", root / f"{entry['name']}.docs"
        for path in (tokens, docs):
            if not path.exists():
                raise ShardError(f"{where}: {path} is missing; re-run moe-swarm-prepare")
        if tokens.stat().st_size != entry["tokens"] * dtype.itemsize:
            raise ShardError(
                f"{where}: {tokens} holds {tokens.stat().st_size // dtype.itemsize} tokens, "
                f"the manifest says {entry['tokens']}"
            )
        offsets = np.fromfile(docs, dtype=OFFSET_DTYPE)
        if offsets.size != entry["documents"] + 1 or (offsets.size and int(offsets[-1]) != entry["tokens"]):
            raise ShardError(
                f"{where}: {docs} does not index {entry['documents']} documents of {entry['tokens']} tokens"
            )
        shards.append(Shard(entry["source"], str(tokens), offsets, dtype.str))
    return shards
