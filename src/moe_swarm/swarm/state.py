"""Save and load the swarm's own state (config + value head) next to, or inside, a model checkpoint.

The state is a dict of builtins and tensors only, so ``torch.load(weights_only=True)`` reads it:

    {"format": "moe_swarm.swarm_state", "version": 1, "cfg": {...},
     "value_head": None | {"config": {"d_model": .., "hidden": ..}, "state_dict": {...}},
     "step_swarm": {...StepSwarmConfig} (optional), "step_checker": None | StepChecker.state() (optional)}

It can be its own file, or a key (default ``"swarm_state"``) inside a Lightning checkpoint dict.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from moe_swarm.atomic import atomic_torch_save
from moe_swarm.swarm.checker import StepChecker
from moe_swarm.swarm.config import SwarmConfig
from moe_swarm.swarm.steps import StepSwarmConfig
from moe_swarm.swarm.trunk_checker import TRUNK_KIND, TrunkStepChecker
from moe_swarm.swarm.value import ValueHead

SWARM_STATE_KEY = "swarm_state"
STATE_FORMAT = "moe_swarm.swarm_state"
STATE_VERSION = 1


def swarm_state_dict(value_head: ValueHead | None, cfg: SwarmConfig) -> dict:
    """The state as a plain dict (tensors copied to CPU)."""
    head = None
    if value_head is not None:
        head = {
            "config": value_head.config(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in value_head.state_dict().items()},
        }
    return {"format": STATE_FORMAT, "version": STATE_VERSION, "cfg": cfg.to_dict(), "value_head": head}


def step_swarm_state(
    checker: StepChecker | TrunkStepChecker | None, steps: StepSwarmConfig, cfg: SwarmConfig | None = None
) -> dict:
    """A swarm state that carries the step checker and the step-swarm config (and an answer-level config)."""
    state = swarm_state_dict(None, cfg or SwarmConfig())
    state["step_swarm"] = steps.to_dict()
    state["step_checker"] = checker.state() if checker is not None else None
    return state


def load_step_checker(
    path_or_dict: str | os.PathLike | dict,
    key: str = SWARM_STATE_KEY,
    map_location: str | torch.device = "cpu",
) -> tuple[StepChecker | TrunkStepChecker | None, StepSwarmConfig | None]:
    """``(step checker or None, step-swarm config or None)`` from a swarm state (file, dict or checkpoint)."""
    state = _read_state(path_or_dict, key, map_location, True)
    steps = state.get("step_swarm")
    checker = state.get("step_checker")
    if checker is None:
        built = None
    elif checker.get("kind") == TRUNK_KIND:  # a head on the generator's states (bound by the swarm)
        built = TrunkStepChecker.from_state(checker, map_location)
    else:
        built = StepChecker.from_state(checker, map_location)
    return built, StepSwarmConfig.from_dict(dict(steps)) if steps is not None else None


def save_swarm_state(
    path_or_dict: str | os.PathLike | dict,
    value_head: ValueHead | None,
    cfg: SwarmConfig,
    key: str = SWARM_STATE_KEY,
) -> dict:
    """Write the state to a file (atomically: temp file + rename), or put it at ``path_or_dict[key]``
    when given a dict (e.g. the checkpoint dict in a LightningModule's ``on_save_checkpoint``).
    Returns the state dict."""
    state = swarm_state_dict(value_head, cfg)
    if isinstance(path_or_dict, dict):
        path_or_dict[key] = state
        return state
    atomic_torch_save(state, path_or_dict)
    return state


def _read_state(path_or_dict, key: str, map_location, weights_only: bool) -> dict:
    if isinstance(path_or_dict, dict):
        obj = path_or_dict
        where = "the given dict"
    else:
        path = Path(path_or_dict)
        if not path.is_file():
            raise FileNotFoundError(f"no swarm state file at {path}")
        where = str(path)
        try:
            obj = torch.load(path, map_location=map_location, weights_only=weights_only)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"{where} holds objects torch.load(weights_only=True) refuses ({e}); if you trust the file, "
                "pass weights_only=False"
            ) from e
    if not isinstance(obj, dict):
        raise ValueError(f"{where} does not hold a dict (got {type(obj).__name__}); not a swarm state")
    state = obj if obj.get("format") == STATE_FORMAT else obj.get(key)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(
            f"{where} holds no swarm state: expected a dict with format={STATE_FORMAT!r} or one under key "
            f"{key!r} (found keys {sorted(map(str, obj))[:10]}); save it with save_swarm_state"
        )
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"swarm state version {state.get('version')} is not supported (expected {STATE_VERSION})"
        )
    return state


def load_swarm_state(
    path_or_dict: str | os.PathLike | dict,
    key: str = SWARM_STATE_KEY,
    map_location: str | torch.device = "cpu",
    weights_only: bool = True,
) -> tuple[ValueHead | None, SwarmConfig]:
    """Read ``(value_head or None, cfg)`` from a swarm-state file or dict, or from ``[key]`` of a
    checkpoint file or dict. ``weights_only=False`` is only for trusted checkpoints that hold
    arbitrary Python objects (it runs pickle)."""
    state = _read_state(path_or_dict, key, map_location, weights_only)
    cfg = SwarmConfig.from_dict(dict(state["cfg"]))
    head = None
    if state.get("value_head") is not None:
        head = ValueHead(**state["value_head"]["config"])
        head.load_state_dict(state["value_head"]["state_dict"])
        head.to(map_location)
        head.eval()
    return head, cfg
