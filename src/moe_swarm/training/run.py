"""The run template shared by ``moe-swarm-train`` and ``moe-swarm-swarm-train``: ``Run(cfg).execute(objective)``.

One training run, start to end, whatever it trains: fix the run id and directory, join the cluster
(when the config has one), hold the run directory (an exclusive lock; a finished run is reported
instead of re-run), seed, let the :class:`Objective` build its LightningModule and datamodule, build
the Trainer (:mod:`moe_swarm.training.trainer`), pick the checkpoint to resume from
(:mod:`moe_swarm.training.resume`), validate at the start, fit, turn SIGTERM into a saved checkpoint and
exit code 143, validate at the final step, write ``summary.json`` (the run's fields plus the
objective's report), and take the process group down while the interpreter is still whole.

What differs per objective (language model, value head, step checker) is only the objective: what
it builds, what it adds to the summary, how the summary is shown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, open_dict

from moe_swarm.config import hydra_job, validate_run_config
from moe_swarm.scale.cluster import ClusterSpec, rendezvous_timeout_s, setup_cluster
from moe_swarm.scale.fault import check_nodes_agree
from moe_swarm.store.layout import RunLayout
from moe_swarm.store.run_lock import RunLock
from moe_swarm.store.summary import already_complete_message, merge_with_previous, read_summary, write_summary
from moe_swarm.training.callbacks import FinalStepValidation, scalar_metrics
from moe_swarm.training.resume import resume_checkpoint
from moe_swarm.training.trainer import build_trainer

__all__ = [
    "SIGTERM_EXIT_CODE",
    "FitOutcome",
    "Objective",
    "Run",
    "is_launching_rank_zero",
    "release_process_group",
]

log = logging.getLogger("moe_swarm.run")
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM: "stopped on request, checkpoint saved", never "succeeded"


@dataclass
class FitOutcome:
    """What the fit left behind; the objective's ``report`` reads it."""

    trainer: L.Trainer
    module: L.LightningModule
    status: str  # "succeeded" | "stopped" (SIGTERM, checkpoint saved)
    start: dict[str, float]
    end: dict[str, float]
    wall_seconds: float
    resumed_from: Path | None


class Objective(Protocol):
    """What one kind of training run trains (a new kind of run is a new objective, not a new template).

    ``build`` runs after seeding, inside the held run directory; ``report`` adds the objective's
    fields to the summary (every rank); ``show`` prints the summary (rank 0).
    """

    def build(self, cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule]: ...

    def report(self, cfg: DictConfig, layout: RunLayout, outcome: FitOutcome) -> dict[str, Any]: ...

    def show(self, summary: dict[str, Any]) -> None: ...


def is_launching_rank_zero(node_rank: int = 0) -> bool:
    """True in the process that owns the run: node 0, not one of Lightning's per-device children
    (LOCAL_RANK > 0) and not a torchrun worker of another global rank (RANK > 0)."""
    env = os.environ
    return node_rank == 0 and env.get("LOCAL_RANK", "0") == "0" and env.get("RANK", "0") == "0"


class Run:
    """One training run of the composed config ``cfg`` (``train`` or ``swarm_train``)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.layout = self.fix_id()

    def execute(self, objective: Objective) -> dict[str, Any]:
        """Train ``objective`` as this run; returns the summary also written to ``<run_dir>/summary.json``.

        A SIGTERM ends in a saved ``last.ckpt``, a summary with ``status: stopped`` and ``SystemExit(143)``.
        """
        cfg = self.cfg
        validate_run_config(cfg)
        cluster = setup_cluster(cfg.cluster, cfg.trainer) if cfg.get("cluster") is not None else None
        owner = is_launching_rank_zero(cluster.node_rank if cluster else 0)
        with self.hold(owner=owner) as previous:
            if (done := self.completed(previous)) is not None:
                return done
            self.setup_process()
            module, datamodule = objective.build(cfg)
            trainer = build_trainer(
                cfg, self.layout, expected_world_size=cluster.world_size if cluster else None
            )
            resume = resume_checkpoint(cfg, self.layout, module)
            if cluster is not None:
                self.agree_with_other_nodes(cluster, resuming=resume is not None)
            outcome = self.fit(module, datamodule, trainer, resume)
            summary = merge_with_previous(
                {**self.base_summary(outcome), **objective.report(cfg, self.layout, outcome)}, previous
            )
            if trainer.is_global_zero:
                write_summary(self.layout.summary, summary)
                objective.show(summary)
            release_process_group()
            if outcome.status == "stopped":
                raise SystemExit(SIGTERM_EXIT_CODE)
            return summary

    # ---- the run directory ------------------------------------------------------------------------
    def fix_id(self) -> RunLayout:
        """Fix the run id (sweep job n gets ``<run_id>-<n>``), export it for DDP children, absolutise run_dir."""
        cfg, job = self.cfg, hydra_job()
        with open_dict(cfg):
            run_id = str(cfg.run_id)
            if job.job_num is not None and not run_id.endswith(f"-{job.job_num}"):
                run_id = f"{run_id}-{job.job_num}"
            cfg.run_id = run_id
            cfg.run_dir = str(Path(cfg.run_dir).resolve())
        # Lightning's DDP launcher re-runs this command in child processes: they must see the same id.
        os.environ["RUN_ID"] = run_id
        return RunLayout(cfg.run_dir)

    @contextlib.contextmanager
    def hold(self, *, owner: bool = True) -> Iterator[dict[str, Any] | None]:
        """Hold the run directory for the body; yields the previous summary of this run id (or None).

        ``owner`` (global rank 0 only) takes the lock; other ranks and nodes only read.
        """
        layout, run_id = self.layout, str(self.cfg.run_id)
        layout.root.mkdir(parents=True, exist_ok=True)
        lock = RunLock(layout.lock, run_id) if owner else None
        if lock is not None:
            lock.acquire()
            if lock.previous_holder:
                log.info(
                    "run %s: took over the lock of a process that is gone (%s)", run_id, lock.previous_holder
                )
        try:
            yield read_summary(layout.summary)
        finally:
            if lock is not None:
                lock.release()

    def completed(self, previous: dict[str, Any] | None) -> dict[str, Any] | None:
        """The previous summary when this run id already finished ``trainer.max_steps`` (and resumes), else None."""
        cfg = self.cfg
        if not previous or not cfg.get("resume", True) or previous.get("status") != "succeeded":
            return None
        max_steps = int(cfg.trainer.max_steps)
        if int(previous.get("global_step") or 0) < max_steps:
            return None
        print(already_complete_message(previous, max_steps), flush=True)
        return previous

    # ---- the process and the cluster --------------------------------------------------------------
    def setup_process(self) -> None:
        """Seed everything, set matmul precision and the intra-op thread count from the config."""
        cfg = self.cfg
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        if cfg.get("float32_matmul_precision"):
            torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))

    def agree_with_other_nodes(self, cluster: ClusterSpec, *, resuming: bool) -> None:
        """Several nodes: all must agree on nodes, devices, run id and resuming before DDP starts."""
        timeout = rendezvous_timeout_s(self.cfg.trainer)
        check_nodes_agree(cluster, run_id=self.cfg.run_id, resuming=resuming, timeout_s=timeout)

    # ---- fit --------------------------------------------------------------------------------------
    def fit(
        self, module: L.LightningModule, datamodule: Any, trainer: L.Trainer, resume: Path | None
    ) -> FitOutcome:
        """Validate at the start (not on resume), fit, validate at the final step."""
        cfg = self.cfg
        start: dict[str, float] = {}
        if resume is None and cfg.get("validate_before_fit", True) and not trainer.fast_dev_run:
            results = trainer.validate(module, datamodule=datamodule, verbose=False)
            start = scalar_metrics(results[0]) if results else {}
        if resume is not None:
            log.info("resuming run %s from %s", cfg.run_id, resume)
        t0 = time.perf_counter()
        status = "succeeded"
        try:
            # weights_only: resume_checkpoint has read this file the same way; a checkpoint never runs code.
            trainer.fit(
                module, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True
            )
        except SIGTERMException:
            status = "stopped"  # CheckpointOnSigterm has written last.ckpt
        wall = time.perf_counter() - t0
        if status == "succeeded" and not trainer.fast_dev_run:
            _validate_final_step(trainer, module, datamodule)
        end = scalar_metrics(trainer.callback_metrics)
        return FitOutcome(trainer, module, status, start, end, wall, resume)

    def base_summary(self, o: FitOutcome) -> dict[str, Any]:
        """The summary fields every run has (the objective's report adds its own)."""
        cfg, layout = self.cfg, self.layout
        ckpt_cb = next((c for c in o.trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
        last = layout.existing_last_checkpoint()
        metric = cfg.get("optimized_metric")
        return {
            "run_id": cfg.run_id,
            "status": o.status,
            "run_dir": str(layout.root),
            "checkpoint": str(last) if last else None,
            "best_checkpoint": (ckpt_cb.best_model_path or None) if ckpt_cb else None,
            "resumed_from": str(o.resumed_from) if o.resumed_from else None,
            "global_step": o.trainer.global_step,
            "wall_seconds": round(o.wall_seconds, 2),
            "optimized_metric": metric,
            "metric_start": o.start.get(metric) if metric else None,
            "metric_end": o.end.get(metric) if metric else None,
            "metrics_start": o.start,
            "metrics": o.end,
            "logs": [str(lg.log_dir) for lg in o.trainer.loggers if getattr(lg, "log_dir", None)],
            "overrides": list(hydra_job().overrides),
        }


def _validate_final_step(trainer: L.Trainer, module: L.LightningModule, datamodule: Any) -> None:
    """Validation already ran at the last step inside fit (FinalStepValidation) except when fit did no
    step at all (a resume at max_steps); then validate once here."""
    tracker = next((c for c in trainer.callbacks if isinstance(c, FinalStepValidation)), None)
    if tracker is None or tracker.validated_step == trainer.global_step or trainer.limit_val_batches == 0:
        return
    trainer.validate(module, datamodule=datamodule, verbose=False)


def release_process_group() -> None:
    """After a run that ended normally (or stopped on SIGTERM, all ranks together): wait for every
    rank, then destroy the process group.

    Lightning destroys it at exit for NCCL only. A gloo group left to interpreter shutdown has its
    worker threads torn down during finalisation, and the process aborts now and then with
    "terminate called without an active exception" after a successful run (pytorch/pytorch#190489).
    Every rank calls this at the same point; a run that fails with an exception never gets here (a
    barrier could wait for a dead rank), and its exit code already says it failed.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
