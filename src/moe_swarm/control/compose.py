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

import threading
from pathlib import Path

from moe_swarm.control.errors import InvalidArgument

_LOCK = threading.Lock()
MAX_MESSAGE_LINES = 8


def _short(text: str) -> str:
    lines = [ln.rstrip() for ln in str(text).splitlines() if ln.strip()]
    return "\n".join(lines[:MAX_MESSAGE_LINES])


def check_training_config(conf_dir: Path, config_name: str, overrides: list[str]) -> None:
    """Compose ``config_name`` from ``conf_dir`` with ``overrides`` and validate it; raise InvalidArgument
    quoting Hydra's or the validator's message. Blocking (about 0.1-0.5 s): call it from a worker thread."""
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
                cfg = compose(config_name=config_name, overrides=list(overrides))
        except (HydraException, OmegaConfBaseException, ValueError) as exc:
            raise InvalidArgument(
                f"the training config does not compose with these overrides:\n{_short(exc)}"
            ) from None
        finally:
            restore_gh_from_backup(saved)
    try:
        validate_run_config(cfg)
    except ConfigError as exc:
        raise InvalidArgument(_short(exc)) from None
