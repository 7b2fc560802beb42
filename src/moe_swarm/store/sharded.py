"""Sharded checkpoints (torch.distributed.checkpoint) and their single-file consolidated export.

The sharded layout is the one Lightning's ``ModelParallelStrategy`` writes for ``last.ckpt``: a
folder with DCP shards of ``{"state_dict": {"model.<fqn>": ...}, "optimizer_0": ...}`` and a
``meta.pt`` holding the rest (``hyper_parameters``, ``global_step``, loop state). DCP stores every
tensor with its global shape, so a checkpoint written by one layout (4 ranks, EP x FSDP) loads
into another (2 ranks, FSDP only). :func:`export_consolidated` turns the folder into one ordinary
``.ckpt`` file that :func:`moe_swarm.store.checkpoint.load_checkpoint` (moe-swarm-eval, the swarm tools,
the sidecar) reads like any training checkpoint; it needs no process group.

A sharded save is published atomically: every rank writes into ``<path>.partial``, then rank 0
swaps that folder in (:func:`publish_sharded`). A rank killed mid-save (OOM, SIGKILL, a lost
node) leaves the previous ``<path>`` whole; writing the shards in place, as DCP and Lightning do,
would leave a folder whose ``.metadata`` describes shards that were half overwritten. The swap is
two renames (``<path>`` -> ``<path>.previous``, ``<path>.partial`` -> ``<path>``);
:func:`recover_sharded` undoes a kill between them. It needs a filesystem that every rank writes
to (as DCP itself does).

    python -m moe_swarm.store.sharded runs/<id>/checkpoints/last.ckpt runs/<id>/consolidated.ckpt
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

from moe_swarm.atomic import atomic_torch_save, fsync_dir
from moe_swarm.store.layout import is_sharded_checkpoint

__all__ = [
    "META_FILENAME",
    "MODEL_KEY",
    "ShardedCheckpointError",
    "consolidated_checkpoint",
    "export_consolidated",
    "is_sharded_checkpoint",
    "load_sharded",
    "prepare_sharded_save",
    "publish_sharded",
    "staging_path",
    "recover_sharded",
    "save_sharded",
    "write_sharded",
]

MODEL_KEY = "state_dict"  # Lightning's name for the module's state
OPTIMIZER_KEY = "optimizer_0"
META_FILENAME = "meta.pt"  # Lightning's name (lightning.fabric.utilities.load._METADATA_FILENAME)
MODEL_PREFIX = "model."  # the LightningModule holds the MoETransformer as `model`
# What a consolidated file keeps from meta.pt (loop and callback states belong to the sharded resume).
_KEPT_META = ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters", "swarm_state")


class ShardedCheckpointError(ValueError):
    """A path is not a readable sharded checkpoint; the message says what was found."""


def _prefixed(state: dict[str, Any]) -> dict[str, Any]:
    return {MODEL_PREFIX + k: v for k, v in state.items()}


def staging_path(path: str | os.PathLike) -> Path:
    """The folder every rank writes a sharded save of ``path`` into before it is published."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def recover_sharded(path: str | os.PathLike) -> bool:
    """If a save was killed between its two renames, put ``<path>.previous`` back as ``<path>``.

    Safe to call from every rank at once (a lost rename race is not an error). True when it
    restored something.
    """
    path = Path(path)
    previous = _previous(path)
    if path.exists() or not (previous.is_file() or is_sharded_checkpoint(previous)):
        return False
    try:
        os.rename(previous, path)
    except FileNotFoundError:  # another rank restored it first
        return False
    fsync_dir(path.parent)
    return True


def prepare_sharded_save(path: str | os.PathLike) -> Path:
    """Rank 0, before a sharded save of ``path``: recover an interrupted swap, remove what a killed save
    left behind, and return the (empty, not yet created) staging folder every rank writes into."""
    path = Path(path)
    recover_sharded(path)
    for leftover in (staging_path(path), _previous(path)):  # after recovery, a .previous is stale
        if leftover.exists():
            _remove(leftover)
    return staging_path(path)


def publish_sharded(path: str | os.PathLike) -> Path:
    """Rank 0, after :func:`prepare_sharded_save` and once every rank's shards and ``meta.pt`` are in the
    staging folder: make it ``path``."""
    path = Path(path)
    staging, previous = staging_path(path), _previous(path)
    if not is_sharded_checkpoint(staging):
        raise ShardedCheckpointError(f"{staging} holds no finished sharded save to publish")
    fsync_dir(staging)
    if path.exists():
        os.rename(path, previous)
    os.rename(staging, path)
    fsync_dir(path.parent)
    if previous.exists():
        _remove(previous)
    return path


def save_sharded(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    meta: dict | None = None,
) -> Path:
    """Collective: every rank writes its shards of ``model`` (an :class:`MoETransformer`) and ``optimizer``.

    Same layout as Lightning's sharded ``last.ckpt``, so :func:`export_consolidated` reads both.
    Rank 0 writes ``meta`` (plain data: ``hyper_parameters``, ``global_step``, ...) to ``meta.pt``.
    Published atomically (module docstring).
    """
    state: dict[str, Any] = {MODEL_KEY: _prefixed(get_model_state_dict(model))}
    if optimizer is not None:
        state[OPTIMIZER_KEY] = get_optimizer_state_dict(model, optimizer)
    return write_sharded(path, state, dict(meta or {}), _barrier)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def write_sharded(
    path: str | os.PathLike, state: dict[str, Any], meta: dict, barrier: Callable[[], None]
) -> Path:
    """Collective: every rank writes its shards of ``state`` (DCP), rank 0 writes ``meta`` as ``meta.pt``,
    and the folder is published atomically as ``path`` (module docstring). ``barrier`` waits for every
    rank (Lightning's ``strategy.barrier`` under Lightning; a no-op in one process).
    """
    import torch.distributed as dist

    path = Path(path)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    staging = prepare_sharded_save(path) if rank0 else staging_path(path)
    barrier()  # leftovers of a killed save are gone before anyone writes
    staging.mkdir(parents=True, exist_ok=True)
    dcp.save(state, checkpoint_id=staging)  # returns on rank 0 after every rank's shards are written
    if rank0:
        atomic_torch_save(meta, staging / META_FILENAME)
        publish_sharded(path)
    barrier()  # nobody reads path before it is published
    return path


def load_sharded(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Collective: load a sharded checkpoint into ``model`` (and ``optimizer``), whatever layout wrote it.

    Returns the ``meta.pt`` dict. The model must already be parallelized the way this run wants it.
    """
    path = Path(path)
    if not is_sharded_checkpoint(path):
        raise ShardedCheckpointError(
            f"{path} is not a sharded checkpoint (no .metadata file in it); pass the folder that "
            "trainer=model_parallel or save_sharded wrote"
        )
    model_state = _prefixed(get_model_state_dict(model))
    dcp.load({MODEL_KEY: model_state}, checkpoint_id=path)
    set_model_state_dict(model, {k[len(MODEL_PREFIX) :]: v for k, v in model_state.items()})
    if optimizer is not None:
        optim_state = get_optimizer_state_dict(model, optimizer)
        dcp.load({OPTIMIZER_KEY: optim_state}, checkpoint_id=path)
        set_optimizer_state_dict(model, optimizer, optim_state)
    meta = path / META_FILENAME
    return torch.load(meta, weights_only=True) if meta.is_file() else {}


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Collective: the whole (unsharded) model state on CPU, on every rank (for tests and small models)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def consolidated_checkpoint(src: str | os.PathLike, *, weights: bool = True) -> dict[str, Any]:
    """The sharded checkpoint ``src`` as the dict of an ordinary single-file ``.ckpt`` (in memory).

    One process, no process group; memory: the whole model once (``weights=False``: only ``meta.pt``,
    with an empty ``state_dict``, for callers that need the step and hyper-parameters). The optimizer
    state is left out: resume from the folder itself.
    """
    src = Path(src)
    if not is_sharded_checkpoint(src):
        what = "a file" if src.is_file() else "missing" if not src.exists() else "a folder without .metadata"
        raise ShardedCheckpointError(
            f"{src} is not a sharded checkpoint ({what}). Pass the folder that trainer=model_parallel writes "
            "(runs/<run_id>/checkpoints/last.ckpt is a folder there); a single-file .ckpt needs no export."
        )
    meta_path = src / META_FILENAME
    if not meta_path.is_file():
        raise ShardedCheckpointError(
            f"{src} has no {META_FILENAME}: it holds no hyper-parameters to rebuild the model"
        )
    meta = torch.load(meta_path, weights_only=True)
    if not isinstance(meta.get("hyper_parameters"), dict) or "model" not in meta["hyper_parameters"]:
        raise ShardedCheckpointError(
            f"{meta_path} has no hyper_parameters['model']: not written by moe-swarm training"
        )
    out = {k: v for k, v in meta.items() if k in _KEPT_META}
    out["state_dict"] = {}
    if weights:
        with warnings.catch_warnings():  # "no process group: loading in one process" is the intent here
            warnings.simplefilter("ignore", UserWarning)
            loaded = _load_state_dict_from_keys({MODEL_KEY}, checkpoint_id=src)
        out["state_dict"] = {k: v for k, v in loaded[MODEL_KEY].items() if isinstance(v, torch.Tensor)}
    out["consolidated_from"] = str(src)
    return out


def export_consolidated(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the sharded checkpoint ``src`` as one ``.ckpt`` file (model weights + hyper-parameters)."""
    dst = Path(dst)
    atomic_torch_save(consolidated_checkpoint(src), dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moe_swarm.store.sharded",
        description="Consolidate a sharded (trainer=model_parallel) checkpoint folder into one .ckpt file.",
    )
    parser.add_argument("src", help="sharded checkpoint folder, e.g. runs/<run_id>/checkpoints/last.ckpt")
    parser.add_argument("dst", help="the single .ckpt file to write")
    args = parser.parse_args(argv)
    try:
        path = export_consolidated(args.src, args.dst)
    except ShardedCheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
