"""Read a Hugging Face MoE folder (config.json + safetensors) into an ``MoETransformer``.

The model is built on the meta device and every destination tensor is allocated once; HF tensors are
read one at a time with plain file reads (no memory map: :mod:`moe_swarm.hf.safetensors_io`) and copied
in, per-expert ones straight into their row of the stacked expert pool, so peak memory is one copy of
the model plus its largest tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from moe_swarm.hf.families import HFError, config_from_hf
from moe_swarm.hf.safetensors_io import ShardReader
from moe_swarm.hf.tokenizer_files import read_tokenizer_files
from moe_swarm.hf.weights import Slot, expected_hf_shape, is_fused_layout, place, weight_plan
from moe_swarm.model.config import TransformerConfig
from moe_swarm.model.transformer import MoETransformer, rope_tables
from moe_swarm.store.checkpoint import save_model_checkpoint

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# Buffers old transformers versions saved; derived, never weights.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_hf_config(folder: Path) -> tuple[dict[str, Any], TransformerConfig]:
    """config.json as a dict and as our model config."""
    path = folder / "config.json"
    if not path.is_file():
        raise HFError(f"{path}: no config.json; pass a Hugging Face model folder")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise HFError(f"{path}: not valid JSON ({exc})") from None
    try:
        return hf, config_from_hf(hf, str(path))
    except KeyError as exc:
        raise HFError(f"{path}: missing field {exc.args[0]!r}") from None


def tensor_files(folder: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it (through the index when there is one)."""
    index = folder / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        files = {name: folder / file for name, file in weight_map.items()}
        for name, file in files.items():
            if not file.is_file():
                raise HFError(f"{file}: shard missing (listed in {index} for {name})")
        return files
    single = folder / SINGLE
    if not single.is_file():
        raise HFError(f"{folder}: neither {SINGLE} nor {INDEX}")
    return dict.fromkeys(ShardReader(single).keys(), single)


def plan_folder(
    folder: Path, model_type: str, cfg: TransformerConfig, state: dict[str, Any]
) -> tuple[list[str], dict[str, Slot], dict[str, ShardReader]]:
    """The HF tensors to read (names), where each goes (the weight plan) and a header reader per tensor,
    after checking from the headers alone (no data read) that every tensor is present, has a place, and
    has the shape ``state`` (our state dict: meta tensors or DTensors, global shapes) implies."""
    files = tensor_files(folder)
    names = [n for n in files if not n.endswith(IGNORED_SUFFIXES)]
    if cfg.tie_weights:  # some tied checkpoints also store the head: it is the embedding by definition
        names = [n for n in names if n != "lm_head.weight"]
    plan = weight_plan(cfg, model_type, fused_experts=is_fused_layout(names))
    unknown = sorted(set(names) - set(plan))
    if unknown:
        raise HFError(f"{files[unknown[0]]}: tensor {unknown[0]} has no place in a {model_type} model")
    missing = sorted(set(plan) - set(names))
    if missing:
        raise HFError(f"{folder}: tensor {missing[0]} missing ({len(missing)} missing in all)")
    by_file: dict[Path, ShardReader] = {}
    readers = {name: by_file.setdefault(files[name], ShardReader(files[name])) for name in names}
    for name in names:
        want, got = expected_hf_shape(plan[name], state[plan[name].ours]), readers[name].shape(name)
        if got != want:
            raise HFError(f"{files[name]}: tensor {name} has shape {got}, config.json implies {want}")
    return names, plan, readers


def load_hf_model(
    folder: str | Path, dtype: torch.dtype | None = None, cfg: TransformerConfig | None = None
) -> tuple[MoETransformer, dict[str, Any]]:
    """The model of a HF folder (eval mode, CPU) and its config.json dict. ``dtype`` None keeps the
    checkpoint's dtype (of the embedding); otherwise every tensor is cast while it is copied. ``cfg``:
    config.json's architecture with run-time settings changed (``moe_swarm.hf.init_from``)."""
    folder = Path(folder)
    hf, from_json = read_hf_config(folder)
    cfg = cfg or from_json
    with torch.device("meta"):
        model = MoETransformer(cfg)
    names, plan, readers = plan_folder(folder, hf["model_type"], cfg, model.state_dict())
    if dtype is None:
        dtype = readers["model.embed_tokens.weight"].dtype("model.embed_tokens.weight")
    state = {k: torch.empty(v.shape, dtype=dtype) for k, v in model.state_dict().items()}
    for key, value in state.items():
        if key.endswith("router.bias"):  # sigmoid-bias balancing buffer: unused by softmax routing
            value.zero_()
    for name in sorted(names, key=lambda n: str(readers[n].path)):  # file by file
        place(plan[name], readers[name].read(name), state)  # one tensor in flight: peak = model + largest
    if cfg.tie_weights:
        state["lm_head.weight"] = state["embed.weight"]
    model.load_state_dict(state, assign=True)
    if cfg.tie_weights:
        model.lm_head.weight = model.embed.weight
    cos, sin = rope_tables(cfg.resolved_head_dim, cfg.max_seq_len, cfg.rope_base)
    model.rope_cos, model.rope_sin = cos, sin
    return model.eval(), hf


def special_token_ids(folder: Path, hf: dict[str, Any]) -> dict[str, Any]:
    """bos/eos/pad ids: generation_config.json first, then config.json."""
    out = {k: hf.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    gen = folder / "generation_config.json"
    if gen.is_file():
        g = json.loads(gen.read_text())
        out.update({k: g[k] for k in out if g.get(k) is not None})
    return out


def hf_metadata(folder: Path, hf: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint keeps of its HF source (``hyper_parameters["hf"]``): the family, special ids and
    the tokenizer files' text (checked against the vocabulary), so export and inference can use them."""
    meta = {"model_type": hf["model_type"], "source": str(folder), **special_token_ids(folder, hf)}
    tokenizer = read_tokenizer_files(folder, int(hf["vocab_size"]))
    if tokenizer:
        meta["tokenizer"] = tokenizer
    return meta


def import_hf(folder: str | Path, out: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Convert a HF folder into a moe-swarm checkpoint at ``out`` (written atomically)."""
    folder = Path(folder)
    hf, _ = read_hf_config(folder)
    meta = hf_metadata(folder, hf)  # a tokenizer that does not fit fails before the weights are read
    model, _ = load_hf_model(folder, dtype)
    save_model_checkpoint(out, model, {"hf": meta})
    return Path(out)
