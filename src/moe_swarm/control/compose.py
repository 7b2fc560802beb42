"""Submit-time check of a training request: compose its config in-process, as the child will.

Hydra's compose API builds the same config the training child would build from the same overrides, in
a fraction of a second, so a typo (``trainer.max_stepz=5``), a wrong type (``trainer.max_steps=abc``)
or an unknown experiment is refused with INVALID_ARGUMENT before a job takes the training slot. The
training entry point's own validation (:func:`moe_swarm.config.validate_run_config`: types, ranges,
model keys, data paths) runs on the result, so ``trainer.max_steps=abc`` is refused the same way.
Hydra keeps global state, so compositions are serialised by a lock and the sidecar's own Hydra state
is set aside and restored around each one.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import threading
from pathlib import Path

from moe_swarm.control.errors import FailedPrecondition, InvalidArgument

_LOCK = threading.Lock()
MAX_MESSAGE_LINES = 8


def _short(text: str) -> str:
    lines = [ln.rstrip() for ln in str(text).splitlines() if ln.strip()]
    return "\n".join(lines[:MAX_MESSAGE_LINES])


_UNKNOWN_KEY = re.compile(r"Could not override '([^']+)'")


def _leaf_keys(node: object, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig):
        return [prefix] if prefix else []
    out: list[str] = []
    for key in node:
        out += _leaf_keys(node._get_node(key), f"{prefix}.{key}" if prefix else str(key))
    return out


def _unknown_key_hint(message: str, overrides: list[str], config_name: str, compose) -> str:
    """For Hydra's "Could not override 'k'. To append ... use +k=v": the CLI's own "Did you mean ...?"
    line instead (a ``+`` is refused remotely, so Hydra's hint would loop). Compose once more with the
    key added, so the model's strict check names the key in its right place, else suggest close keys."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from moe_swarm.config import ConfigError, validate_run_config

    found = _UNKNOWN_KEY.search(message)
    if not found:
        return ""
    key = found.group(1)
    text = next((o for o in overrides if o.split("=", 1)[0].lstrip("+") == key), f"{key}=...")
    trial = [f"+{o}" if o == text else o for o in overrides]
    try:
        cfg = compose(config_name=config_name, overrides=trial)
    except (HydraException, OmegaConfBaseException, ValueError):
        return f"Could not override {key!r} (override {text!r}): it is not a key of the config"
    try:
        validate_run_config(cfg)
    except ConfigError as exc:
        said = [p for p in exc.problems if key in p and "Did you mean" in p]
        if said:
            return f"Could not override {key!r} (override {text!r}): {said[0]}"
    except Exception:  # the key is unknown anyway; fall back to the close-match list below
        pass
    keys = [k for k in _leaf_keys(cfg) if k != key and not k.startswith("hydra.")]
    by_leaf: dict[str, list[str]] = {}
    for k in keys:
        by_leaf.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    close = set(difflib.get_close_matches(key, keys, n=3, cutoff=0.7))
    for leaf in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(by_leaf), n=2, cutoff=0.7):
        close.update(by_leaf[leaf][:3])
    mean = f" Did you mean {' or '.join(sorted(close))}?" if close else ""
    return f"Could not override {key!r} (override {text!r}): it is not a key of the config.{mean}"


def check_training_config(conf_dir: Path, config_name: str, overrides: list[str]) -> dict | None:
    """Compose ``config_name`` from ``conf_dir`` with ``overrides`` and validate it; raise InvalidArgument
    quoting Hydra's or the validator's message; return the composed ``model`` section (plain data, None
    without one). Blocking (about 0.1-0.5 s): call it from a worker thread."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from omegaconf.errors import OmegaConfBaseException

    from moe_swarm.config import ConfigError, register_resolvers, validate_run_config

    register_resolvers()
    with _LOCK:
        # `moe-swarm-serve` itself runs under @hydra.main, which leaves Hydra initialised: set that state
        # aside for the composition and put it back afterwards.
        saved = get_gh_backup()
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3", job_name="validate"):
                try:
                    cfg = compose(config_name=config_name, overrides=list(overrides))
                except (HydraException, OmegaConfBaseException, ValueError) as exc:
                    hint = _unknown_key_hint(str(exc), list(overrides), config_name, compose)
                    raise InvalidArgument(
                        f"the training config does not compose with these overrides:\n{hint or _short(exc)}"
                    ) from None
        finally:
            restore_gh_from_backup(saved)
    try:
        validate_run_config(cfg)
    except ConfigError as exc:
        raise InvalidArgument(_short(exc)) from None
    from omegaconf import OmegaConf

    model = OmegaConf.select(cfg, "model", default=None)
    return OmegaConf.to_container(model, resolve=True) if model is not None else None


def _flat(d: dict, prefix: str = "model") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}") if isinstance(v, dict) else {f"{prefix}.{k}": v})
    return out


def check_resume_model(run_id: str, checkpoint: Path, model: dict) -> None:
    """A run resumes its own model: refuse (FailedPrecondition) a request whose composed model config
    differs from the one in the run's last checkpoint, naming each changed key. Blocking (reads the
    checkpoint's metadata, tensors memory-mapped)."""
    from moe_swarm.model.config import TransformerConfig
    from moe_swarm.store.checkpoint import model_config_from_hparams, read_checkpoint

    try:
        saved = model_config_from_hparams(
            dict(read_checkpoint(checkpoint, mmap=True).get("hyper_parameters") or {})
        )
        names = {f.name for f in dataclasses.fields(TransformerConfig)}  # e.g. init_from is not the model's
        wanted = TransformerConfig.from_dict({k: v for k, v in model.items() if k in names})
    except (ValueError, OSError):  # unreadable: the child reports it with the full message
        return
    old, new = _flat(saved.to_dict()), _flat(wanted.to_dict())
    changed = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    if changed:
        raise FailedPrecondition(
            f"run {run_id!r} has a checkpoint ({checkpoint}) trained with another model config, so it "
            f"cannot resume with this request: {'; '.join(changed[:8])}. Drop the model overrides to "
            "resume it, or pass a new run_id to start a fresh run"
        )
