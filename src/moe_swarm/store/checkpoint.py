"""Read and write model checkpoints without Lightning: the one loader for serving, evaluation and your code.

Training writes Lightning ``.ckpt`` files (``torch.save`` zip archives) whose ``state_dict`` keys
start with ``model.`` and whose ``hyper_parameters`` hold:

- ``model``: the model config (``TransformerConfig.to_dict()``; old flat layouts still load);
- ``task``: the reasoning task the model was trained for, ``{"name": ..., "kwargs": {...}}``, or
  absent/None for text models. **This is the one place the task lives.** Checkpoints written
  before this rule kept it under ``eval_task``; :func:`task_spec` reads both (``task`` first);
- ``run_config``: the resolved Hydra config of the run, as plain data (never instantiated).

Swarm value-head checkpoints add a top-level ``swarm_state`` entry. Everything is read with
``torch.load(weights_only=True)``, so loading a checkpoint can never execute code; the errors
never suggest turning that off.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moe_swarm.atomic import atomic_torch_save
from moe_swarm.model.config import TransformerConfig
from moe_swarm.model.transformer import MoETransformer
from moe_swarm.store.layout import is_sharded_checkpoint

__all__ = [
    "MODEL_PREFIX",
    "CheckpointError",
    "LoadedCheckpoint",
    "load_checkpoint",
    "load_model",
    "model_config_from_hparams",
    "read_checkpoint",
    "save_model_checkpoint",
    "task_spec",
]

MODEL_PREFIX = "model."
_ZIP_MAGIC = b"PK\x03\x04"
# Buffers the model rebuilds from its config; old checkpoints may lack them.
_DERIVED_BUFFERS = ("rope_cos", "rope_sin")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, not a moe-swarm checkpoint, or does not fit its config."""


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns. ``model`` is in eval mode on ``map_location``."""

    model: MoETransformer
    hparams: dict[str, Any]
    task: dict[str, Any] | None  # {"name": str, "kwargs": dict} or None (text model)
    run_config: dict[str, Any] | None
    swarm_state: dict[str, Any] | None
    global_step: int | None
    path: Path


def _not_ours(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a moe-swarm checkpoint: {why}. Pass the .ckpt file that training wrote "
        "(runs/<run_id>/checkpoints/last.ckpt or best-*.ckpt)."
    )


def _first_bytes(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def read_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, mmap: bool = False
) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with one-paragraph errors (:class:`CheckpointError`) for
    missing, foreign, truncated and unsafe files; returns the raw checkpoint dict. ``mmap=True``
    maps tensors from the file instead of reading them (cheap when only metadata is needed)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass the path of a .ckpt written by training "
            "(runs/<run_id>/checkpoints/last.ckpt)"
        )
    if is_sharded_checkpoint(path):  # sharded (trainer=model_parallel): consolidate
        from moe_swarm.store.sharded import consolidated_checkpoint

        return consolidated_checkpoint(path, weights=not mmap)  # mmap: metadata only, empty state_dict
    if not path.is_file():
        raise _not_ours(path, "it is a directory, not a file")
    head = _first_bytes(path)
    if not zipfile.is_zipfile(path):
        if head.startswith(_ZIP_MAGIC):
            raise CheckpointError(
                f"{path} is truncated or corrupt: it starts like a PyTorch archive but its zip directory is "
                f"missing ({path.stat().st_size} bytes; typically a copy or save that was cut short). Use "
                "another checkpoint of the run (best-*.ckpt) or re-copy the file."
            )
        shown = head.decode("ascii", "replace") if head.isascii() else repr(head)
        raise _not_ours(path, f"it is not a PyTorch zip archive (it starts with {shown!r})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise _not_ours(
            path,
            f"it holds Python objects{what} that a weights-only load refuses; moe-swarm checkpoints hold "
            "only tensors and plain data",
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError) as exc:
        raise CheckpointError(
            f"{path} is truncated or corrupt: torch could not read it ({type(exc).__name__}: "
            f"{_first_line(exc)}). Use another checkpoint of the run (best-*.ckpt) or re-copy the file."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise _not_ours(path, "it is a PyTorch file without a 'state_dict' entry")
    return ckpt


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def task_spec(hparams: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's reasoning task as ``{"name", "kwargs"}``: ``hparams["task"]``, else the legacy
    ``hparams["eval_task"]``; None for a text model. A bare string is a task name without kwargs."""
    raw = hparams.get("task") or hparams.get("eval_task")
    if not raw:
        return None
    if isinstance(raw, str):
        return {"name": raw, "kwargs": {}}
    if isinstance(raw, Mapping) and raw.get("name"):
        return {"name": str(raw["name"]), "kwargs": dict(raw.get("kwargs") or {})}
    raise CheckpointError(f"checkpoint task {raw!r} is not {{'name': ..., 'kwargs': {{...}}}}")


def model_config_from_hparams(
    hparams: Mapping[str, Any], path: Path | str = "checkpoint"
) -> TransformerConfig:
    """The model config stored in ``hparams['model']`` (strict keys where the model supports it)."""
    if not isinstance(hparams.get("model"), Mapping):
        raise _not_ours(
            Path(path), "it has no 'model' hyper-parameters (it was not written by moe-swarm training)"
        )
    try:
        return TransformerConfig.from_dict(dict(hparams["model"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} holds a model config this version cannot build: {exc}") from None


def _load_weights(model: MoETransformer, state_dict: Mapping[str, Any], path: Path) -> None:
    state = {k[len(MODEL_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(MODEL_PREFIX)}
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(_DERIVED_BUFFERS)]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{len(v)} {what} (e.g. {', '.join(v[:3])})"
            for what, v in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of another shape", mismatched),
            )
            if v
        ]
        raise CheckpointError(
            f"{path}: the weights do not fit the model config stored with them: {'; '.join(parts)} "
            "tensor(s). The file was edited or written by an incompatible version."
        )
    model.load_state_dict(state, strict=False)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """THE checkpoint loader: the model (eval mode), its hparams, task, run config and swarm state.

    Raises :class:`CheckpointError` with a one-paragraph message for anything that is not a
    readable moe-swarm checkpoint whose weights fit its config.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    model = MoETransformer(model_config_from_hparams(hparams, path))
    _load_weights(model, ckpt["state_dict"], path)
    model.to(map_location).eval()
    swarm_state = ckpt.get("swarm_state")
    step = ckpt.get("global_step")
    return LoadedCheckpoint(
        model=model,
        hparams=hparams,
        task=task_spec(hparams),
        run_config=hparams.get("run_config") if isinstance(hparams.get("run_config"), dict) else None,
        swarm_state=swarm_state if isinstance(swarm_state, dict) else None,
        global_step=int(step) if step is not None else None,
        path=path,
    )


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[MoETransformer, dict]:
    """Older tuple form of :func:`load_checkpoint`: (model, hparams + ``global_step`` + ``swarm_state``)."""
    loaded = load_checkpoint(path, map_location)
    hparams = dict(loaded.hparams)
    hparams["global_step"] = loaded.global_step
    if loaded.swarm_state is not None:
        hparams["swarm_state"] = loaded.swarm_state
    return loaded.model, hparams


def save_model_checkpoint(
    path: str | os.PathLike, model: MoETransformer, hparams: dict | None = None, extra: dict | None = None
) -> None:
    """Write a checkpoint that :func:`load_checkpoint` (and the sidecar) can read, in the training layout."""
    hp = dict(hparams or {})
    hp["model"] = model.cfg.to_dict()
    ckpt = {
        "state_dict": {MODEL_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": hp,
        "global_step": hp.get("global_step", 0),
    }
    ckpt.update(extra or {})
    atomic_torch_save(ckpt, path)
