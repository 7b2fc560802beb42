"""Where the Hydra config tree lives, and the resolvers it uses.

From a source checkout (editable install) the tree is the repository's ``conf/``; from an installed
wheel it is the packaged ``moe_swarm/conf`` (hatchling force-include). Both work from any directory.
"""

from __future__ import annotations

import os
import secrets
import time
from functools import cache
from pathlib import Path

from omegaconf import OmegaConf

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """Absolute path of the config tree: repo ``conf/`` when present, else the packaged copy."""
    override = os.environ.get("MOE_SWARM_CONFIG_DIR")
    candidates = ([Path(override)] if override else []) + [
        _PACKAGE_DIR.parent.parent / "conf",  # src/moe_swarm -> repo root (editable install)
        _PACKAGE_DIR / "conf",  # installed wheel
    ]
    for path in candidates:
        if (path / "train.yaml").is_file():
            return path.resolve()
    raise FileNotFoundError(
        "moe-swarm config tree not found (looked in " + ", ".join(map(str, candidates)) + "); "
        "reinstall the package or set MOE_SWARM_CONFIG_DIR to a folder that holds train.yaml"
    )


@cache
def generated_run_id() -> str:
    """One id per process: the RUN_ID environment variable, else time + random suffix."""
    return os.environ.get("RUN_ID") or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("moe_swarm_run_id"):
        OmegaConf.register_new_resolver("moe_swarm_run_id", generated_run_id)


register_resolvers()
