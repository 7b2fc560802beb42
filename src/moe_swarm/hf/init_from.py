"""``model.init_from=DIR``: start a training run from a Hugging Face folder.

The architecture comes from DIR/config.json and the weights from its safetensors; the run's model
config may change only run-time settings (:data:`RUN_TIME_KEYS`). Any other model key that is set and
disagrees with config.json is an error naming each key and both values: the run never trains a model
other than the one the folder holds. ``model=hf`` (conf/model/hf.yaml) sets nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from moe_swarm.hf.families import HFError
from moe_swarm.hf.importer import hf_metadata, load_hf_model, read_hf_config
from moe_swarm.hf.parallel_load import check_folder
from moe_swarm.model.config import TransformerConfig
from moe_swarm.model.transformer import MoETransformer

# Settings that change how the model runs or trains, not which weights it has.
RUN_TIME_KEYS = ("max_seq_len", "dropout", "moe.dispatch", "moe.router.jitter_eps", "moe.router.noise_std")
# Filled by the router group (conf/router/) in every config; config.json decides it for an imported model.
FROM_CHECKPOINT_KEYS = ("moe.router.renormalize",)


def _leaves(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _set(cfg: TransformerConfig, key: str, value: Any) -> TransformerConfig:
    head, _, rest = key.partition(".")
    if not rest:
        return replace(cfg, **{head: value})
    return replace(cfg, **{head: _set(getattr(cfg, head), rest, value)})


def merged_config(folder: Path, conf_model: Mapping[str, Any]) -> tuple[dict[str, Any], TransformerConfig]:
    """config.json (as a dict) and its architecture with the run-time settings of ``conf_model``;
    :class:`HFError` listing every other key that disagrees."""
    hf, cfg = read_hf_config(folder)
    ours = _leaves(cfg.to_dict())
    conflicts = []
    for key, value in _leaves(conf_model).items():
        if key == "init_from" or value is None or key in FROM_CHECKPOINT_KEYS:
            continue
        if key in RUN_TIME_KEYS:
            cfg = _set(cfg, key, value)
        elif key not in ours:
            conflicts.append(f"model.{key}={value!r} (not a model setting)")
        elif ours[key] != value:
            conflicts.append(f"model.{key}={value!r} (config.json: {ours[key]!r})")
    if conflicts:
        raise HFError(
            f"{folder / 'config.json'}: model.init_from takes the architecture from this file, but the model "
            f"config disagrees: {', '.join(conflicts)}; use model=hf model.init_from={folder} "
            f"(it may change only {', '.join('model.' + k for k in RUN_TIME_KEYS)})"
        )
    return hf, TransformerConfig.from_dict(cfg.to_dict())


def init_model(
    folder: str | Path, conf_model: Mapping[str, Any], dtype: torch.dtype = torch.float32
) -> tuple[MoETransformer, dict[str, Any]]:
    """The model of ``folder`` (train mode, ``dtype``: fp32 master weights by default) and the
    ``hyper_parameters["hf"]`` metadata (family, special ids, tokenizer files) its checkpoints carry."""
    folder = Path(folder)
    hf, cfg = merged_config(folder, conf_model)
    meta = hf_metadata(folder, hf)
    model, _ = load_hf_model(folder, dtype, cfg)
    return model.train(), meta


def init_model_deferred(
    folder: str | Path, conf_model: Mapping[str, Any]
) -> tuple[MoETransformer, dict[str, Any]]:
    """Like :func:`init_model`, but the model is built on the meta device and only checked against the
    folder (every tensor present with its shape, from the safetensors headers): the caller shards it
    first where it will be sharded, then fills it with :func:`moe_swarm.hf.parallel_load.load_local_shards`,
    so that under ``trainer=model_parallel`` each rank reads only its slices."""
    folder = Path(folder)
    hf, cfg = merged_config(folder, conf_model)
    meta = hf_metadata(folder, hf)
    with torch.device("meta"):
        model = MoETransformer(cfg)
    check_folder(model, folder)
    return model.train(), meta


__all__ = ["RUN_TIME_KEYS", "init_model", "init_model_deferred", "merged_config"]
