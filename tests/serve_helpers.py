"""Helpers for the sidecar's tests: local settings, a tiny real checkpoint, bounded waits."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moe_swarm.serve.settings import ServeSettings


def local_settings(state_dir: str | Path, **changes: Any) -> ServeSettings:
    """Settings for a server on 127.0.0.1 with a free port, auth off, state under ``state_dir``."""
    s = ServeSettings(host="127.0.0.1", port=0, state_dir=str(state_dir), grace_s=5.0)
    s.auth.enabled = False
    s.training.cancel_grace_s = 60.0
    for dotted, value in changes.items():
        target = s
        *parents, leaf = dotted.split("__")
        for p in parents:
            target = getattr(target, p)
        if not hasattr(target, leaf):
            raise AttributeError(f"ServeSettings has no setting {dotted.replace('__', '.')!r}")
        setattr(target, leaf, value)
    return s


def tiny_checkpoint(path: str | Path, seed: int = 0, task: dict | None = None, **model_kw: Any) -> Path:
    """Write a real (randomly initialised) small MoE model in the training checkpoint layout."""
    import torch

    from moe_swarm.checkpoint import save_model_checkpoint
    from moe_swarm.model import MoETransformer, TransformerConfig

    cfg = {
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "d_ff": 32,
        "num_experts": 4,
        "top_k": 2,
        "max_seq_len": 96,
    }
    cfg.update(model_kw)
    torch.manual_seed(seed)
    model = MoETransformer(TransformerConfig.from_dict(cfg))  # flat keys: the legacy layout
    hparams: dict[str, Any] = {"global_step": 0}
    if task is not None:
        hparams["task"] = task
    save_model_checkpoint(path, model, hparams)
    return Path(path)


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(interval)
