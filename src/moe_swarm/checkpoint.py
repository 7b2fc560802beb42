"""Read and write model checkpoints without Lightning: for serving, evaluation and your own code.

Training writes Lightning ``.ckpt`` files whose ``state_dict`` keys start with ``model.`` and whose
``hyper_parameters`` hold the model config (``model``) and, for reasoning runs, the task (``task``).
This module reads that layout with plain ``torch.load(weights_only=True)``, so a checkpoint can never
execute code when loaded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from moe_swarm.model.transformer import MoETransformer, TransformerConfig

MODEL_PREFIX = "model."


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a moe-swarm checkpoint."""


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist; pass the path of a .ckpt written by training"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for torn or foreign files
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {exc}") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{str(path)!r} is not a moe-swarm checkpoint (no 'state_dict')")
    return ckpt


def model_config_from_hparams(hparams: dict[str, Any]) -> TransformerConfig:
    if "model" not in hparams:
        raise CheckpointError(
            "checkpoint has no 'model' hyper-parameters; it was not written by moe-swarm training"
        )
    fields = TransformerConfig.__dataclass_fields__
    return TransformerConfig(**{k: v for k, v in dict(hparams["model"]).items() if k in fields})


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[MoETransformer, dict]:
    """Build the model stored in a training checkpoint; returns (model in eval mode, hyper-parameters)."""
    ckpt = read_checkpoint(path, map_location)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    model = MoETransformer(model_config_from_hparams(hparams))
    state = {k[len(MODEL_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("rope_cos", "rope_sin"))]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match its model config: missing={missing} unexpected={unexpected}"
        )
    model.to(map_location).eval()
    hparams["global_step"] = ckpt.get("global_step")
    if "swarm_state" in ckpt:
        hparams["swarm_state"] = ckpt["swarm_state"]
    return model, hparams


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename: never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~umask)  # mkstemp's 0600 would hide it from a sidecar user
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model_checkpoint(
    path: str | os.PathLike, model: MoETransformer, hparams: dict | None = None, extra: dict | None = None
) -> None:
    """Write a checkpoint that :func:`load_model` (and the sidecar) can read, in the training layout."""
    hp = dict(hparams or {})
    hp["model"] = model.cfg.to_dict()
    ckpt = {
        "state_dict": {MODEL_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": hp,
        "global_step": hp.get("global_step", 0),
    }
    ckpt.update(extra or {})
    atomic_torch_save(ckpt, path)
