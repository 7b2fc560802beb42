"""Where the Hydra config tree lives, its resolvers, the Hydra job facts, and config validation.

From a source checkout (editable install) the tree is the repository's ``conf/``; from an installed
wheel it is the packaged ``moe_swarm/conf`` (hatchling force-include). Both work from any directory.
"""

from __future__ import annotations

import glob
import math
import os
import secrets
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from moe_swarm.errors import UserError

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


def _nonempty(node: Any) -> bool:
    """``${moe_swarm_nonempty:${oc.select:logger,null}}``: true when a config group holds at least one entry."""
    return bool(node)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("moe_swarm_run_id"):
        OmegaConf.register_new_resolver("moe_swarm_run_id", generated_run_id)
    if not OmegaConf.has_resolver("moe_swarm_nonempty"):
        OmegaConf.register_new_resolver("moe_swarm_nonempty", _nonempty)
    if not OmegaConf.has_resolver("moe_swarm_product"):  # trainer=model_parallel: nodes x devices
        OmegaConf.register_new_resolver("moe_swarm_product", lambda *xs: math.prod(int(x) for x in xs))


register_resolvers()


# ---- Hydra job facts (the one place that asks HydraConfig) ---------------------------------------


@dataclass(frozen=True)
class HydraJob:
    """What Hydra knows about the running job: sweep or single run, job number, command-line overrides."""

    multirun: bool = False
    job_num: int | None = None
    overrides: tuple[str, ...] = ()


def hydra_job() -> HydraJob:
    """The current Hydra job (a default HydraJob outside ``@hydra.main``, e.g. under the compose API)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return HydraJob()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return HydraJob(multirun, int(hc.job.num) if multirun else None, tuple(hc.overrides.task))


# ---- validation of a composed training config -----------------------------------------------------


class ConfigError(UserError, ValueError):
    """The composed config has values that cannot work; one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "invalid config (fix these overrides or config values):\n" + "\n".join(f"  {p}" for p in problems)
        )


def _problem(key: str, value: Any, allowed: str) -> str:
    return f"{key}={value!r}: {allowed}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(cfg: DictConfig, key: str, problems: list[str], *, allow_none: bool = False) -> None:
    v = OmegaConf.select(cfg, key, default=None)
    if v is None and (allow_none or OmegaConf.select(cfg, key, default="<absent>") == "<absent>"):
        return
    if not _is_int(v) or v < 1:
        problems.append(_problem(key, v, "must be an integer >= 1" + (" or null" if allow_none else "")))


def _path_problems(key: str, value: Any) -> list[str]:
    if value is None:
        return []
    entries = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    out = []
    for entry in entries:
        text = os.fspath(entry)
        exists = (
            glob.glob(os.path.expanduser(text)) if glob.has_magic(text) else Path(text).expanduser().exists()
        )
        if not exists:
            out.append(
                _problem(key, text, f"no such file or folder (from {Path.cwd()}); give an existing path")
            )
    return out


def validate_run_config(cfg: DictConfig) -> None:
    """Check a composed ``train`` (or ``swarm_train``) config before anything is built; raise :class:`ConfigError` listing
    every problem (key, value, what is allowed). Resolves interpolations as a side effect."""
    problems = [
        f"{key}=???: a value is required here, e.g. {key}=..." for key in sorted(OmegaConf.missing_keys(cfg))
    ]
    if problems:
        raise ConfigError(problems)
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:  # an interpolation that cannot resolve names its key
        raise ConfigError([f"cannot resolve the config: {exc}"]) from None
    for key in ("trainer.max_steps", "data.batch_size", "model.d_model", "model.n_layers", "model.n_heads"):
        _positive_int(cfg, key, problems)
    _positive_int(cfg, "threads", problems, allow_none=True)
    vci = OmegaConf.select(cfg, "trainer.val_check_interval", default=None)
    if vci is not None and not (_is_int(vci) and vci >= 1) and not (isinstance(vci, float) and 0 < vci <= 1):
        problems.append(
            _problem("trainer.val_check_interval", vci, "must be an integer >= 1 (steps) or null")
        )
    lr = OmegaConf.select(cfg, "module.optimizer.lr", default=None)
    if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0):
        problems.append(_problem("module.optimizer.lr", lr, "must be a number > 0"))
    for key in ("data.paths", "data.bin_path", "data.val_bin_path"):
        problems += _path_problems(key, OmegaConf.select(cfg, key, default=None))
    block, seq = OmegaConf.select(cfg, "data.block_size"), OmegaConf.select(cfg, "model.max_seq_len")
    if _is_int(block) and _is_int(seq) and block > seq:
        problems.append(_problem("data.block_size", block, f"must be <= model.max_seq_len={seq}"))
    if "model" in cfg:
        problems += _model_problems(cfg)  # unknown keys, routing modes, top_k range, ...
    if problems:
        raise ConfigError(problems)


def _model_problems(cfg: DictConfig) -> list[str]:
    """The model config's own strict check (unknown keys named with their path, value ranges)."""
    from moe_swarm.model.config import TransformerConfig

    model = OmegaConf.to_container(cfg.model, resolve=True)
    init_from = model.pop("init_from", None) if isinstance(model, dict) else None
    if init_from is not None:  # the architecture comes from the folder's config.json (moe_swarm.hf.init_from)
        return _path_problems("model.init_from", init_from)
    try:
        TransformerConfig.from_dict(model)
    except (TypeError, ValueError) as exc:
        return [str(exc)]
    return []
