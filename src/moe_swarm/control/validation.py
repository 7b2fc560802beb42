"""Checks that keep a remote request from becoming code execution or a file read outside allowed roots.

Pure functions: each takes the request value and the server's policy and either returns the cleaned value
or raises a :class:`~moe_swarm.control.errors.ControlError` with a message that says what to fix.

Training overrides are parsed with Hydra's own override grammar (the same parser the training child uses),
so what is checked here is exactly what the child will apply.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moe_swarm.control.errors import InvalidArgument, NotFound, PermissionDenied
from moe_swarm.control.experiments import experiment_names
from moe_swarm.store.layout import is_checkpoint

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
KEY_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
# Keys the server sets itself for every job: a client must use the request fields instead.
SERVER_OWNED_KEYS = {
    "run_id": "set the run id with the request's run_id field, not an override",
    "run_dir": "the run directory is <runs_dir>/<run_id>; choose it with the run_id field",
    "paths": "paths are fixed by the server's configuration",
    "experiment": "choose the experiment with config_path, not an override",
    "hydra": "Hydra's own settings (hydra.*) cannot be changed remotely",
}
CONFIG_SUFFIXES = (".yaml", ".yml")
CHECKPOINT_ROOTS_KEY = "serve.inference.checkpoint_roots"
MAX_CONFIG_BYTES = 256 * 1024


@dataclass(frozen=True)
class OverridePolicy:
    """What a remote client may override. ``addable_keys`` entries are exact keys or ``prefix.*``."""

    addable_keys: Sequence[str] = ()
    path_keys: Sequence[str] = ()
    data_roots: Sequence[str | os.PathLike] = ()
    max_overrides: int = 64
    max_override_chars: int = 512


@dataclass(frozen=True)
class ResolvedConfig:
    """Where a training job's experiment comes from: a name in conf/experiment/ or a YAML file."""

    kind: str  # "experiment" | "file"
    name: str
    path: Path
    text: str = field(default="", repr=False)


def check_id(value: str, what: str, *, required: bool = False) -> str:
    """Ids (run, request, model, job) are short names: letters, digits, ``_ . -``; never a path."""
    if not value:
        if required:
            raise InvalidArgument(f"{what} is empty; pass a {what}")
        return ""
    if not ID_PATTERN.match(value) or ".." in value:
        raise InvalidArgument(
            f"{what} {value[:80]!r} is not valid: use 1-64 letters, digits, '_', '.' or '-' "
            f"(starting with a letter or digit, no '..', no '/')"
        )
    return value


def is_within(path: Path, roots: Iterable[Path]) -> bool:
    """True when the real path lies inside one of the (real) roots."""
    real = os.path.realpath(path)
    for root in roots:
        root_real = os.path.realpath(root)
        if real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep):
            return True
    return False


def _reject_traversal(value: str, what: str) -> None:
    if "\x00" in value:
        raise InvalidArgument(f"{what} contains a NUL byte; pass a plain path")
    parts = re.split(r"[\\/]", value)
    if ".." in parts:
        raise InvalidArgument(
            f"{what} {value[:200]!r} contains '..': path traversal is not allowed; "
            f"name a file inside the allowed roots"
        )


def resolve_config_path(
    config_path: str,
    *,
    experiment_dir: Path,
    config_roots: Sequence[str | os.PathLike],
    default_experiment: str | None,
) -> ResolvedConfig:
    """Map ``TrainRequest.config_path`` to an experiment name or a YAML file inside an allowed root.

    A bare name (``quickstart``) is an experiment in ``experiment_dir``; anything with a ``/`` or a
    ``.yaml``/``.yml`` suffix is a file: relative paths are looked up in each config root in order,
    absolute ones must lie (after resolving symlinks) inside a root.
    """
    value = (config_path or "").strip()
    if not value:
        if not default_experiment:
            raise InvalidArgument(
                "config_path is empty and the server has no default experiment; "
                f"pass an experiment name ({experiment_names(experiment_dir) or 'none found'})"
            )
        value = default_experiment
    if len(value) > 1024:
        raise InvalidArgument(f"config_path is {len(value)} characters long; the limit is 1024")
    _reject_traversal(value, "config_path")
    looks_like_file = "/" in value or "\\" in value or value.endswith(CONFIG_SUFFIXES)
    if not looks_like_file:
        if not EXPERIMENT_NAME.match(value):
            raise InvalidArgument(
                f"config_path {value[:80]!r} is not an experiment name (letters, digits, '_', '-') "
                f"nor a .yaml path"
            )
        path = Path(experiment_dir) / f"{value}.yaml"
        if not path.is_file():
            raise NotFound(
                f"experiment {value!r} does not exist; available: "
                f"{experiment_names(experiment_dir) or 'none'}"
            )
        return ResolvedConfig(kind="experiment", name=value, path=path)

    if not value.endswith(CONFIG_SUFFIXES):
        raise InvalidArgument(f"config_path {value[:200]!r} must name a .yaml or .yml file")
    roots = [Path(r) for r in config_roots]
    if not roots:
        raise PermissionDenied(
            f"config_path {value[:200]!r} is a file, but this server accepts no config files "
            f"(serve.training.config_roots is empty); pass an experiment name instead"
        )
    candidate = Path(value)
    if candidate.is_absolute():
        candidates = [candidate]
    else:
        candidates = [root / candidate for root in roots]
    for path in candidates:
        if not is_within(path, roots):
            raise PermissionDenied(
                f"config_path {value[:200]!r} is outside the allowed config roots "
                f"{[str(r) for r in roots]}; put the file under one of them"
            )
    existing = [p for p in candidates if p.is_file()]
    if not existing:
        raise NotFound(
            f"config file {value[:200]!r} does not exist under the allowed config roots {[str(r) for r in roots]}"
        )
    path = Path(os.path.realpath(existing[0]))
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise InvalidArgument(f"config file {value!r} is {size} bytes; the limit is {MAX_CONFIG_BYTES}")
    text = path.read_text(encoding="utf-8", errors="replace")
    check_config_file_text(text, value)
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.stem) or "config"
    return ResolvedConfig(kind="file", name=stem, path=path, text=text)


def check_config_file_text(text: str, what: str) -> None:
    """A request-supplied experiment file gets the same rules as overrides: plain values only."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"config file {what!r} is not valid YAML: {exc}") from exc
    if data is None:
        return
    if not isinstance(data, dict):
        raise InvalidArgument(f"config file {what!r} must be a YAML mapping (like conf/experiment/*.yaml)")
    if "hydra" in data:
        raise InvalidArgument(
            f"config file {what!r} sets 'hydra': Hydra's own settings cannot be changed remotely"
        )
    for key in ("run_id", "run_dir", "paths"):
        if key in data:
            raise InvalidArgument(f"config file {what!r} sets {key!r}: {SERVER_OWNED_KEYS[key]}")
    for entry in data.get("defaults") or []:
        text_entry = str(entry)
        if ".." in text_entry or "://" in text_entry or "hydra" in text_entry:
            raise InvalidArgument(
                f"config file {what!r} has defaults entry {text_entry[:120]!r}: only config groups of the "
                f"server's conf/ tree may be selected"
            )
    _check_value_tree({k: v for k, v in data.items() if k != "defaults"}, f"config file {what!r}")


def _special_key(segment: str) -> bool:
    return len(segment) >= 2 and segment.startswith("_") and segment.endswith("_")


def _check_value_tree(value: Any, where: str, *, allow_paths: bool = False) -> list[str]:
    """Walk a parsed value; reject instantiate keys and interpolations; return the path-like strings."""
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            ks = str(k)
            if _special_key(ks):
                raise InvalidArgument(
                    f"{where} contains the key {ks!r}: instantiation keys (_target_, _partial_, ...) "
                    f"are not accepted remotely; select a config group instead"
                )
            found += _check_value_tree(v, where, allow_paths=allow_paths)
    elif isinstance(value, (list, tuple)):
        for v in value:
            found += _check_value_tree(v, where, allow_paths=allow_paths)
    elif isinstance(value, str):
        if "${" in value:
            raise InvalidArgument(
                f"{where} contains the interpolation {value[:80]!r}: interpolations and resolvers "
                f"are not accepted remotely; pass a literal value"
            )
        if "\x00" in value:
            raise InvalidArgument(f"{where} contains a NUL byte")
        if "/" in value or "\\" in value or value.startswith("~") or value == "..":
            found.append(value)
    return found


def _key_allowed(key: str, allowlist: Sequence[str]) -> bool:
    for entry in allowlist:
        if entry.endswith(".*"):
            if key.startswith(entry[:-1]):
                return True
        elif key == entry:
            return True
    return False


def validate_overrides(overrides: Sequence[str], policy: OverridePolicy) -> list[str]:
    """Check every Hydra override; returns them unchanged (stripped) when all pass.

    Rejected: ``_target_`` and other instantiation keys anywhere (key or value), ``hydra.*``, server-owned
    keys (run id, run dir, paths, experiment), package overrides (``key@pkg``), deletions (``~key``),
    sweeps, interpolations, new keys (``+key``/``++key``) outside ``policy.addable_keys``, and path values
    except for ``policy.path_keys`` pointing inside ``policy.data_roots``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    if len(overrides) > policy.max_overrides:
        raise InvalidArgument(f"{len(overrides)} overrides given; the limit is {policy.max_overrides}")
    parser = OverridesParser.create()
    cleaned: list[str] = []
    for raw in overrides:
        text = raw.strip()
        if not text:
            raise InvalidArgument("an override is empty; pass key=value")
        if len(text) > policy.max_override_chars:
            raise InvalidArgument(
                f"override {text[:60]!r}... is {len(text)} characters; the limit is {policy.max_override_chars}"
            )
        if "\x00" in text or "\n" in text or "\r" in text:
            raise InvalidArgument(f"override {text[:60]!r} contains a control character")
        try:
            (ov,) = parser.parse_overrides([text])
        except HydraException as exc:
            raise InvalidArgument(f"override {text!r} is not valid Hydra syntax: {exc}") from exc
        except Exception as exc:  # the grammar raises a few other types on odd input
            raise InvalidArgument(f"override {text!r} is not valid Hydra syntax: {exc}") from exc
        key = ov.key_or_group
        where = f"override {text!r}"
        segments = re.split(r"[./]", key)
        if not key or not all(KEY_SEGMENT.match(s) for s in segments):
            raise InvalidArgument(f"{where}: key {key!r} is not a dotted name like trainer.max_steps")
        if any(_special_key(s) for s in segments):
            raise InvalidArgument(
                f"{where} touches {key!r}: instantiation keys (_target_, _partial_, ...) cannot be "
                f"overridden remotely; select a config group instead"
            )
        if segments[0] in SERVER_OWNED_KEYS:
            raise InvalidArgument(f"{where}: {SERVER_OWNED_KEYS[segments[0]]}")
        if ov.package is not None:
            raise InvalidArgument(f"{where}: package overrides (key@package) are not accepted remotely")
        if ov.type == OverrideType.DEL:
            raise InvalidArgument(f"{where}: deleting keys (~key) is not accepted remotely")
        if ov.type in (OverrideType.ADD, OverrideType.FORCE_ADD) and not _key_allowed(
            key, policy.addable_keys
        ):
            allowed = ", ".join(policy.addable_keys) or "none"
            raise InvalidArgument(
                f"{where} adds the new key {key!r}, which is not in the server's allowlist ({allowed}); "
                f"override an existing key without '+' or ask the operator to allow it"
            )
        if ov.is_sweep_override():
            raise InvalidArgument(f"{where} is a sweep; start one job per value")
        paths = _check_value_tree(ov.value(), where)
        if paths:
            _check_path_values(key, paths, where, policy)
        cleaned.append(text)
    return cleaned


def _check_path_values(key: str, paths: list[str], where: str, policy: OverridePolicy) -> None:
    if not _key_allowed(key, policy.path_keys):
        raise InvalidArgument(
            f"{where} passes the path {paths[0][:120]!r}: path values are only accepted for "
            f"{list(policy.path_keys) or 'no keys on this server'}"
        )
    roots = [Path(r) for r in policy.data_roots]
    for value in paths:
        _reject_traversal(value, where)
        if value.startswith("~") or not Path(value).is_absolute():
            raise InvalidArgument(
                f"{where}: {value!r} must be an absolute path inside {[str(r) for r in roots]}"
            )
        # globs are checked by their fixed prefix
        fixed = Path(re.split(r"[*?\[]", value, maxsplit=1)[0] or "/")
        if not roots or not is_within(fixed, roots):
            raise PermissionDenied(
                f"{where}: {value!r} is outside the allowed data roots {[str(r) for r in roots]}"
            )


def resolve_checkpoint_path(value: str, roots: Sequence[str | os.PathLike]) -> Path:
    """A checkpoint named by path must be a ``.ckpt``/``.pt`` file inside an allowed root."""
    _reject_traversal(value, "checkpoint")
    if not value.endswith((".ckpt", ".pt")):
        raise InvalidArgument(
            f"checkpoint {value[:200]!r} must be a .ckpt or .pt file (or a job id / run id)"
        )
    root_paths = [Path(r) for r in roots]
    path = Path(value)
    candidates = [path] if path.is_absolute() else [r / path for r in root_paths]
    for p in candidates:
        if not is_within(p, root_paths):
            raise PermissionDenied(
                f"checkpoint {value[:200]!r} is outside the allowed checkpoint roots "
                f"{[str(r) for r in root_paths]}; put it under one of them or add its folder to "
                f"{CHECKPOINT_ROOTS_KEY}"
            )
    if not path.is_absolute():  # as the README writes it: runs/<id>/checkpoints/last.ckpt, from here
        also = [Path.cwd() / path] + [r.parent / path for r in root_paths if path.parts[0] == r.name]
        candidates += [p for p in also if is_within(p, root_paths)]
    for p in candidates:
        if is_checkpoint(p):
            return Path(os.path.realpath(p))
    raise NotFound(
        f"checkpoint {value[:200]!r} does not exist under the checkpoint roots {[str(r) for r in root_paths]} "
        f"(the runs folder and {CHECKPOINT_ROOTS_KEY}); a relative path may start with the runs folder, "
        f"as in runs/<run_id>/checkpoints/last.ckpt"
    )


def check_range(value: int | float, what: str, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise InvalidArgument(f"{what}={value} is out of range; use a value in [{low}, {high}]")


__all__ = [
    "OverridePolicy",
    "ResolvedConfig",
    "check_config_file_text",
    "check_id",
    "check_range",
    "is_within",
    "resolve_checkpoint_path",
    "resolve_config_path",
    "validate_overrides",
]
