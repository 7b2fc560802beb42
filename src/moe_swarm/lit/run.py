"""The run layer shared by ``moe-swarm-train`` and ``moe-swarm-swarm-train``.

One training run, start to end: fix the run id and directory (:func:`prepare_run`), hold the
run directory (:func:`hold_run`: an exclusive lock, and a finished run is reported instead of
re-run), build the Trainer with callbacks composed from config (:func:`build_trainer`), pick and
check the checkpoint to resume from (:func:`resume_checkpoint`), then :func:`fit_and_summarise`:
validate at the start, fit, turn SIGTERM into a saved checkpoint and exit code 143, validate at
the final step, write ``summary.json``, and take the process group down while the interpreter is
still whole (:func:`release_process_group`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from moe_swarm.checkpoint import CheckpointError, model_config_from_hparams, read_checkpoint
from moe_swarm.cli import UserError
from moe_swarm.config import hydra_job
from moe_swarm.layout import RunLayout, metrics_lines_enabled
from moe_swarm.lit.callbacks import FinalStepValidation, MetricsLines, scalar_metrics
from moe_swarm.lit.fault import AtomicCheckpointIO, CheckpointOnSigterm, WorldSizeCheck
from moe_swarm.parallel.checkpoint import recover_sharded
from moe_swarm.run_lock import RunLock
from moe_swarm.summary import already_complete_message, merge_with_previous, read_summary, write_summary

__all__ = [
    "SIGTERM_EXIT_CODE",
    "FitOutcome",
    "ResumeError",
    "build_callbacks",
    "build_loggers",
    "build_trainer",
    "completed",
    "fit_and_summarise",
    "hold_run",
    "is_launching_rank_zero",
    "lm_summary",
    "prepare_run",
    "quiet_lightning",
    "release_process_group",
    "resume_checkpoint",
    "scalar_metrics",
    "setup_process",
    "show_lm_summary",
]

log = logging.getLogger("moe_swarm.run")
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM: "stopped on request, checkpoint saved", never "succeeded"


class ResumeError(UserError):
    """The run's checkpoint cannot be resumed with this config; the message says what to do."""


def prepare_run(cfg: DictConfig) -> RunLayout:
    """Fix the run id (sweep job n gets ``<run_id>-<n>``), export it for DDP children, absolutise run_dir."""
    job = hydra_job()
    with open_dict(cfg):
        run_id = str(cfg.run_id)
        if job.job_num is not None and not run_id.endswith(f"-{job.job_num}"):
            run_id = f"{run_id}-{job.job_num}"
        cfg.run_id = run_id
        cfg.run_dir = str(Path(cfg.run_dir).resolve())
    # Lightning's DDP launcher re-runs this command in child processes: they must see the same id.
    os.environ["RUN_ID"] = run_id
    return RunLayout(cfg.run_dir)


def setup_process(cfg: DictConfig) -> None:
    """Seed everything, set matmul precision and the intra-op thread count from the config."""
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))


def is_launching_rank_zero(node_rank: int = 0) -> bool:
    """True in the process that owns the run: node 0, not one of Lightning's per-device children
    (LOCAL_RANK > 0) and not a torchrun worker of another global rank (RANK > 0)."""
    env = os.environ
    return node_rank == 0 and env.get("LOCAL_RANK", "0") == "0" and env.get("RANK", "0") == "0"


@contextlib.contextmanager
def hold_run(cfg: DictConfig, layout: RunLayout, *, owner: bool = True) -> Iterator[dict[str, Any] | None]:
    """Hold the run directory for the body; yields the previous summary of this run id (or None).

    ``owner`` (global rank 0 only) takes the lock; other ranks and nodes only read.
    """
    layout.root.mkdir(parents=True, exist_ok=True)
    lock = RunLock(layout.lock, str(cfg.run_id)) if owner else None
    if lock is not None:
        lock.acquire()
        if lock.previous_holder:
            log.info(
                "run %s: took over the lock of a process that is gone (%s)", cfg.run_id, lock.previous_holder
            )
    try:
        yield read_summary(layout.summary)
    finally:
        if lock is not None:
            lock.release()


def completed(cfg: DictConfig, previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """The previous summary when this run id already finished ``trainer.max_steps`` (and resumes), else None."""
    if not previous or not cfg.get("resume", True) or previous.get("status") != "succeeded":
        return None
    max_steps = int(cfg.trainer.max_steps)
    if int(previous.get("global_step") or 0) < max_steps:
        return None
    print(already_complete_message(previous, max_steps), flush=True)
    return previous


# ---- trainer --------------------------------------------------------------------------------------


def build_loggers(cfg: DictConfig) -> list:
    return [hydra.utils.instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg]


def build_callbacks(
    cfg: DictConfig, layout: RunLayout, expected_world_size: int | None = None
) -> list[Callback]:
    """Every entry of the ``callbacks`` config group whose ``enabled`` is true (default), then the
    callbacks the run layer always needs, built directly."""
    callbacks: list[Callback] = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        spec = OmegaConf.to_container(node, resolve=True)
        if not spec.pop("enabled", True):
            log.debug("callback %s disabled by config", name)
            continue
        callbacks.append(hydra.utils.instantiate(spec))
    if metrics_lines_enabled():  # set by the gRPC sidecar for its children
        callbacks.append(MetricsLines())
    callbacks += [
        FinalStepValidation(),
        CheckpointOnSigterm(str(layout.checkpoints)),
        WorldSizeCheck(expected_world_size),
    ]
    return callbacks


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def quiet_lightning() -> None:
    """One line per Lightning message and no adverts: under Hydra both Lightning's own handler and
    Hydra's root handlers printed every INFO line; Lightning advertises a cloud logger at every
    fit; Lightning's pytree helper warns about a torch deprecation the user cannot act on."""
    logging.getLogger("lightning").propagate = False
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in lg.filters):
            lg.addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*deprecated")


def build_trainer(cfg: DictConfig, layout: RunLayout, expected_world_size: int | None = None) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with loggers, callbacks and atomic checkpoint writes."""
    quiet_lightning()
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, layout, expected_world_size)
    return hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )


# ---- resume ---------------------------------------------------------------------------------------


def _model_dict(model: Any, where: Path | str) -> dict:
    return model_config_from_hparams({"model": model}, where).to_dict()


def _differences(a: dict, b: dict, prefix: str = "model") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}.{key}")
        elif va != vb:
            out.append(f"{prefix}.{key}: {va!r} in the checkpoint, {vb!r} now")
    return out


def _check_fits(path: Path, model_now: dict | None) -> int:
    """Read ``path`` (memory-mapped) and compare its model config with the current one; returns its step."""
    ckpt = read_checkpoint(path, mmap=True)
    step = int(ckpt.get("global_step") or 0)
    if model_now is not None:
        saved = (ckpt.get("hyper_parameters") or {}).get("model")
        if saved is not None:
            diff = _differences(_model_dict(saved, path), _model_dict(model_now, "this config"))
            if diff:
                raise ResumeError(
                    f"cannot resume run from {path} (step {step}): the model config changed since it was "
                    f"saved ({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}). Drop those overrides to "
                    "continue the run, start a new run with another run_id, or pass resume=false to train "
                    "this run id from scratch (its checkpoints are overwritten)."
                )
    return step


def resume_checkpoint(cfg: DictConfig, layout: RunLayout, module: L.LightningModule) -> Path | None:
    """The checkpoint this run resumes from: ``last.ckpt`` if readable and built for the same model;
    else the newest readable ``*.ckpt`` of the run (saying so); None when there is none or
    ``resume=false``. Raises :class:`ResumeError` (one paragraph) when nothing can be resumed."""
    if cfg.get("resume", True) and recover_sharded(layout.last_checkpoint):
        log.warning(
            "run %s: the last sharded save was cut off mid-swap; restored the previous last.ckpt", cfg.run_id
        )
    last = layout.existing_last_checkpoint()
    if not cfg.get("resume", True) or last is None:
        return None
    model_now = module.hparams.get("model") if hasattr(module, "hparams") else None
    try:
        _check_fits(last, model_now)
        return last
    except CheckpointError as exc:
        problem = str(exc)
    others = sorted(
        (p for p in layout.checkpoints.glob("*.ckpt") if p != last),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for other in others:
        try:
            step = _check_fits(other, model_now)
        except CheckpointError:
            continue
        log.warning(
            "run %s: %s -- resuming from the newest readable checkpoint instead: %s (step %d)",
            cfg.run_id,
            problem,
            other,
            step,
        )
        return other
    raise ResumeError(
        f"cannot resume run {cfg.run_id!r}: {problem} No other readable checkpoint is in {layout.checkpoints}. "
        "Start this run id from scratch with resume=false (overwrites its checkpoints), or use another run_id."
    )


# ---- fit ------------------------------------------------------------------------------------------


@dataclass
class FitOutcome:
    """What :func:`fit_and_summarise` hands to the caller's ``describe``."""

    trainer: L.Trainer
    module: L.LightningModule
    status: str  # "succeeded" | "stopped" (SIGTERM, checkpoint saved)
    start: dict[str, float]
    end: dict[str, float]
    wall_seconds: float
    resumed_from: Path | None


def _validate_final_step(trainer: L.Trainer, module: L.LightningModule, datamodule: Any) -> None:
    """Validation already ran at the last step inside fit (FinalStepValidation) except when fit did no
    step at all (a resume at max_steps); then validate once here."""
    tracker = next((c for c in trainer.callbacks if isinstance(c, FinalStepValidation)), None)
    if tracker is None or tracker.validated_step == trainer.global_step or trainer.limit_val_batches == 0:
        return
    trainer.validate(module, datamodule=datamodule, verbose=False)


def fit_and_summarise(
    cfg: DictConfig,
    module: L.LightningModule,
    datamodule: Any,
    trainer: L.Trainer,
    layout: RunLayout,
    *,
    resume: Path | None,
    previous: dict[str, Any] | None,
    describe: Callable[[FitOutcome], dict[str, Any]],
    show: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Validate at the start (not on resume), fit, validate at the final step, write the summary.

    ``describe`` adds the caller's fields to the summary (every rank); ``show`` prints it (rank 0).
    A SIGTERM ends in a saved ``last.ckpt``, a summary with ``status: stopped`` and ``SystemExit(143)``.
    """
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
    outcome = FitOutcome(trainer, module, status, start, end, wall, resume)
    summary = merge_with_previous({**_base_summary(cfg, layout, outcome), **describe(outcome)}, previous)
    if trainer.is_global_zero:
        write_summary(layout.summary, summary)
        show(summary)
    release_process_group()
    if status == "stopped":
        raise SystemExit(SIGTERM_EXIT_CODE)
    return summary


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


def _base_summary(cfg: DictConfig, layout: RunLayout, o: FitOutcome) -> dict[str, Any]:
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


# ---- the language-model run's summary fields ---------------------------------------------------------


def lm_summary(o: FitOutcome) -> dict[str, Any]:
    """Summary fields of a ``moe-swarm-train`` run: parameter counts, throughput, load balance, plots."""
    from moe_swarm.lit.callbacks import ExpertLoadHeatmap, TokenThroughput

    pc = o.module.model.count_parameters()
    tput = next((c for c in o.trainer.callbacks if isinstance(c, TokenThroughput)), None)
    heat = next((c for c in o.trainer.callbacks if isinstance(c, ExpertLoadHeatmap)), None)
    return {
        "tokens_per_s": round(tput.mean_tokens_per_s, 1) if tput and tput.seconds > 0 else None,
        "mfu": o.module.mfu(tput.mean_tokens_per_s) if tput and tput.seconds > 0 else None,
        "params": {"total": pc.total, "active": pc.active, "embedding": pc.embedding},
        "load_max_over_mean": o.end.get("router/load_max_over_mean"),
        "plots": str(heat.dirpath) if heat and heat.last_path else None,
    }


def show_lm_summary(summary: dict[str, Any]) -> None:
    from moe_swarm.summary import format_train_summary

    print(format_train_summary(summary), flush=True)
