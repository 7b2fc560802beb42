"""Which checkpoint a run resumes from, and why it cannot: the run's ``last.ckpt`` if readable and
built for the same model, else its newest readable checkpoint; a changed model config or nothing
readable is a :class:`ResumeError` that says what to do."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from moe_swarm.errors import UserError
from moe_swarm.store.checkpoint import CheckpointError, model_config_from_hparams, read_checkpoint
from moe_swarm.store.layout import RunLayout
from moe_swarm.store.sharded import recover_sharded

__all__ = ["ResumeError", "resume_checkpoint"]

log = logging.getLogger("moe_swarm.run")


class ResumeError(UserError):
    """The run's checkpoint cannot be resumed with this config; the message says what to do."""


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
