"""Fault tolerance for training: atomic checkpoints, SIGTERM, and distributed runs that are wired wrong.

- :class:`AtomicCheckpointIO` writes every checkpoint atomically (:mod:`moe_swarm.atomic`), so a kill
  during a save leaves the previous ``last.ckpt`` whole. (Lightning's own writer goes through an
  fsspec transaction whose temporary file lives in the system temp dir; when that is another
  filesystem, as ``/tmp`` and a mounted volume are in containers, the last step is a copy.)
- :class:`CheckpointOnSigterm` saves ``last.ckpt`` when Lightning stops on SIGTERM.
- :class:`PeriodicCheckpoint` saves ``last.ckpt`` on a step and wall-clock cadence (SIGKILL bound).
- :func:`check_nodes_agree` runs before DDP starts: every node tells node 0 its node count, device
  count, run id and whether it resumes; a disagreement fails on every node within seconds with the
  values in the message, instead of a rendezvous that hangs or times out with a socket error.
- :class:`WorldSizeCheck` compares the initialised process group with what this node expects.
- :class:`ReplicaConsistencyCheck` proves that all ranks hold identical parameters and buffers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.distributed.tensor import DTensor

from moe_swarm.atomic import atomic_torch_save
from moe_swarm.scale.cluster import ClusterConfigError, ClusterSpec, check_world_size

log = logging.getLogger(__name__)

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointOnSigterm",
    "PeriodicCheckpoint",
    "ReplicaConsistencyCheck",
    "ReplicaDivergenceError",
    "WorldSizeCheck",
    "check_nodes_agree",
    "state_digest",
]


# ---- checkpoints ------------------------------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints through :func:`moe_swarm.atomic.atomic_torch_save`; remote URLs as Lightning does.

    A temporary file left by a process killed mid-save is removed by the next save of the same path.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or _is_remote(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path, remove_stale=True)


def _is_remote(path: Any) -> bool:
    text = str(path)
    return "://" in text and not text.startswith("file://")


class CheckpointOnSigterm(Callback):
    """On SIGTERM, write ``last.ckpt`` at the next step boundary, then let the run stop.

    Lightning turns SIGTERM into ``SIGTERMException`` at the next batch boundary (all ranks agree);
    this saves the full training state (model, optimizer, loops) so ``run_id=<same id>`` resumes
    where it stopped. ``moe-swarm-train`` then exits with 143.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self.saved = False

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit" or self.saved:
            return
        trainer.save_checkpoint(self.path)
        self.saved = True
        if trainer.is_global_zero:
            log.warning("SIGTERM: saved %s at global step %d; stopping", self.path, trainer.global_step)


class PeriodicCheckpoint(Callback):
    """Saves ``last.ckpt`` every ``every_n_steps`` optimizer steps and whenever ``every_minutes`` of
    training passed since the last save, independent of validation: bounds what a SIGKILL, an OOM
    kill or a lost node can take. 0 / None turns either cadence off. At the end of training it
    saves too, unless a ModelCheckpoint already wrote ``last.ckpt`` at that step.

    The wall-clock decision is made on rank 0 and broadcast, so every rank saves together (a
    checkpoint save is collective under DDP). Writes go through the trainer's checkpoint IO
    (atomic in moe-swarm runs).
    """

    def __init__(
        self,
        dirpath: str,
        every_n_steps: int = 50,
        every_minutes: float | None = 10.0,
        filename: str = "last.ckpt",
    ) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 0:
            raise ValueError(f"every_n_steps={every_n_steps!r} must be an integer >= 0 (0 = no step cadence)")
        if every_minutes is not None and not every_minutes >= 0:
            raise ValueError(f"every_minutes={every_minutes!r} must be >= 0 or null (no wall-clock cadence)")
        self.path = Path(dirpath) / filename
        self.every_n_steps = every_n_steps
        self.every_s = float(every_minutes) * 60.0 if every_minutes else None
        self._last_save = time.monotonic()
        self._saved_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save = time.monotonic()
        self._saved_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._saved_step or trainer.fast_dev_run:
            return  # gradient accumulation: several batches share one optimizer step
        due = self.every_n_steps > 0 and step % self.every_n_steps == 0
        if not due and self.every_s is not None:
            due = bool(trainer.strategy.broadcast(time.monotonic() - self._last_save >= self.every_s, src=0))
        if due:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final state is always resumable: save unless this step's last.ckpt exists already."""
        step = trainer.global_step
        if trainer.fast_dev_run or step == self._saved_step:
            return
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "save_last", False) and getattr(cb, "_last_global_step_saved", None) == step:
                return  # ModelCheckpoint wrote last.ckpt at the final validation
        self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step
        self._last_save = time.monotonic()


# ---- distributed start-up -----------------------------------------------------------------------

_PREFLIGHT_PREFIX = "moe_swarm/preflight"


def check_nodes_agree(
    spec: ClusterSpec,
    *,
    run_id: str,
    resuming: bool,
    timeout_s: float,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Before DDP's rendezvous: make every node compare its view of the run with node 0's.

    Node 0 serves a short-lived TCPStore on MASTER_ADDR:MASTER_PORT (closed again before Lightning
    opens its own there); each node publishes ``num_nodes``, ``devices``, ``run_id`` and whether it
    resumes, and checks node 0's. Any difference raises :class:`ClusterConfigError` naming both
    views; a node that never comes raises after ``timeout_s``. Without it, nodes that disagree on
    the node count hang in the rendezvous until a gloo/NCCL timeout with a socket error, and nodes
    with different run ids (or one that cannot see the shared checkpoint) start from different
    states. Runs only in the process that starts a node (not in Lightning's per-device children)
    and only with several nodes.
    """
    environ = os.environ if environ is None else environ
    if spec.num_nodes == 1 or environ.get("LOCAL_RANK", "0") != "0":
        return
    if environ.get("TORCHELASTIC_RUN_ID"):  # under torchrun its c10d rendezvous already formed the world
        return
    if spec.master_port is None:  # ClusterSpec already refuses this with several nodes
        raise ClusterConfigError("several nodes need MASTER_PORT to agree on a rendezvous")
    mine = {"num_nodes": spec.num_nodes, "devices": spec.devices, "run_id": run_id, "resuming": resuming}
    where = f"{spec.master_addr}:{spec.master_port}"
    timeout = timedelta(seconds=timeout_s)
    try:
        store = dist.TCPStore(
            spec.master_addr,
            spec.master_port,
            is_master=spec.node_rank == 0,
            wait_for_workers=False,
            timeout=timeout,
        )
    except (RuntimeError, dist.DistError) as exc:
        raise ClusterConfigError(
            f"node {spec.node_rank} could not reach node 0 at {where} within {timeout_s:g} s: {exc}. Check that "
            f"node 0 runs, MASTER_ADDR/MASTER_PORT are the same on every node, and the port is open."
        ) from exc
    try:
        store.set(f"{_PREFLIGHT_PREFIX}/node{spec.node_rank}", json.dumps(mine))
        if spec.node_rank == 0:
            problems = [
                _compare_views(rank, _read_view(store, rank, spec, where, timeout_s), mine, spec)
                for rank in range(1, spec.num_nodes)
            ]
            # Keep serving until every node has read node 0's view, so each one fails with the values too.
            store.wait([f"{_PREFLIGHT_PREFIX}/read{r}" for r in range(1, spec.num_nodes)], timeout)
            problem = next((p for p in problems if p), None)
        else:
            theirs = _read_view(store, 0, spec, where, timeout_s)
            store.set(f"{_PREFLIGHT_PREFIX}/read{spec.node_rank}", "1")
            problem = _compare_views(0, theirs, mine, spec)
            if not problem:
                _wait_for_node0_to_close(store, timeout_s)
    except (RuntimeError, dist.DistError) as exc:
        raise ClusterConfigError(
            f"node start-up check at {where} failed after up to {timeout_s:g} s on node {spec.node_rank} "
            f"(this node: {_fmt(mine)}): {exc}. Another node stopped, or disagrees on the run; read its log."
        ) from exc
    finally:
        del store
    if problem:
        raise ClusterConfigError(problem)
    log.info("all %d nodes agree: %s", spec.num_nodes, _fmt(mine))


def _wait_for_node0_to_close(store: dist.TCPStore, timeout_s: float) -> None:
    """Return once node 0's start-up store has stopped answering (or after ``timeout_s``).

    Lightning's rendezvous opens the next TCPStore on the same port. A node that connected to it while
    node 0's start-up store was still up was dropped when that store closed ("Failed to recv, got 0
    bytes"), and node 0 then waited for it until its timeout: a hang seen once in a fresh-clone
    ``make test``, one start in five to ten in a loop of two nodes in one process (tests/test_ddp.py)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not store.check([f"{_PREFLIGHT_PREFIX}/node0"]):  # another store answers on the port
                return
        except (RuntimeError, dist.DistError):  # closed: the port is free for Lightning's rendezvous
            return
        time.sleep(0.02)


def _read_view(store: dist.TCPStore, rank: int, spec: ClusterSpec, where: str, timeout_s: float) -> dict:
    try:
        return json.loads(store.get(f"{_PREFLIGHT_PREFIX}/node{rank}"))
    except (RuntimeError, dist.DistError) as exc:
        raise ClusterConfigError(
            f"node {rank} did not report to {where} within {timeout_s:g} s (this node_rank={spec.node_rank} "
            f"expects num_nodes={spec.num_nodes}). Either fewer nodes were started than num_nodes says, or "
            f"node {rank} failed at start-up or uses another MASTER_ADDR/MASTER_PORT."
        ) from exc


def _compare_views(rank: int, theirs: dict, mine: dict, spec: ClusterSpec) -> str | None:
    differ = [k for k in mine if theirs.get(k) != mine[k]]
    if not differ:
        return None
    return (
        f"nodes disagree on the run ({', '.join(differ)}): node {rank} has [{_fmt(theirs)}]; this node "
        f"(node_rank={spec.node_rank}) has [{_fmt(mine)}]. Start every node with the same NUM_NODES/DEVICES (trainer.num_nodes/"
        f"trainer.devices) and run_id, on storage where every node sees the same checkpoints."
    )


def _fmt(view: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in view.items())


class WorldSizeCheck(Callback):
    """After the process group is up: it must have exactly num_nodes x devices members."""

    def __init__(self, expected_world_size: int | None) -> None:
        self.expected = expected_world_size

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        actual = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if self.expected is not None:
            check_world_size(self.expected, actual)
        check_world_size(trainer.world_size, actual)


# ---- replica consistency ------------------------------------------------------------------------


class ReplicaDivergenceError(RuntimeError):
    """DDP ranks hold different parameters or buffers: the run is no longer one model."""


def state_digest(module: torch.nn.Module) -> dict[str, str]:
    """SHA-256 of every tensor in ``module.state_dict()`` (parameters and persistent buffers), by name."""
    out = {}
    for name, tensor in sorted(module.state_dict().items()):
        if isinstance(tensor, DTensor):  # FSDP2/expert shards: digest the whole tensor (a collective,
            tensor = tensor.full_tensor()  # in the same sorted order on every rank)
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h = hashlib.sha256(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
        out[name] = h.hexdigest()
    return out


class ReplicaConsistencyCheck(Callback):
    """Checks that all DDP ranks hold bit-identical parameters and buffers; raises if they do not.

    DDP keeps replicas equal only if every rank applies the same update: a rank-local buffer update
    (e.g. a router bias from local token counts) or ``broadcast_buffers=False`` lets them drift
    silently. Checked at the end of training and, with ``every_n_train_steps > 0``, after every
    n-th optimizer step (before the next forward pass re-broadcasts buffers). At the end each rank
    writes ``<dirpath>/param_digest_rank{R}.json`` (skipped when ``dirpath`` is None). Does nothing
    in a one-process run.
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 0) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps={every_n_train_steps} must be >= 0 (0 = only at the end)")
        self.dirpath = Path(dirpath) if dirpath else None
        self.every_n_train_steps = every_n_train_steps
        self.checks = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = self.every_n_train_steps
        if n > 0 and trainer.world_size > 1 and trainer.global_step % n == 0:
            self._compare(trainer, pl_module, state_digest(pl_module))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size == 1:
            return
        digests = state_digest(pl_module)
        self._compare(trainer, pl_module, digests)
        if self.dirpath is not None:
            total = hashlib.sha256("".join(f"{k}={v};" for k, v in digests.items()).encode()).hexdigest()
            self.dirpath.mkdir(parents=True, exist_ok=True)
            record = {
                "rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "global_step": trainer.global_step,
                "sha256": total,
                "tensors": digests,
            }
            (self.dirpath / f"param_digest_rank{trainer.global_rank}.json").write_text(
                json.dumps(record, indent=1)
            )

    def _compare(self, trainer: L.Trainer, pl_module: L.LightningModule, digests: dict[str, str]) -> None:
        gathered: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(gathered, digests)
        self.checks += 1
        reference = gathered[0]
        for rank, other in enumerate(gathered[1:], start=1):
            if other != reference:
                names = sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
                raise ReplicaDivergenceError(
                    f"rank {rank} differs from rank 0 at global step {trainer.global_step} in {len(names)} "
                    f"tensor(s): {names[:5]}. Something updates state outside DDP's gradient all-reduce on "
                    f"one rank only; reduce it across ranks (trainer.strategy.reduce) before applying it."
                )
