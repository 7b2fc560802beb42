"""Write a moe-swarm model as a Hugging Face folder that ``AutoModelForCausalLM.from_pretrained`` loads.

The folder (config.json with the family's standard ``model_type``, generation_config.json,
model.safetensors or shards with their index, the tokenizer files) is written into a temporary sibling and renamed into
place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import Tensor

from moe_swarm.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE
from moe_swarm.hf.families import HFError, choose_family, config_to_hf
from moe_swarm.hf.importer import INDEX, SINGLE
from moe_swarm.hf.safetensors_io import write_tensors
from moe_swarm.hf.tokenizer_files import export_tokenizer_files
from moe_swarm.hf.weights import Slot, expected_hf_shape, extract, shard_groups, weight_plan
from moe_swarm.model.transformer import MoETransformer
from moe_swarm.store.checkpoint import load_checkpoint

DEFAULT_SHARD_BYTES = 5 * 2**30


def _special_ids(model: MoETransformer, hf_meta: dict[str, Any]) -> dict[str, Any]:
    if hf_meta:
        return {k: hf_meta.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    if model.cfg.vocab_size == VOCAB_SIZE:  # trained here on the byte tokenizer
        return {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    return {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


def _nbytes(slot: Slot, state: dict[str, Tensor]) -> int:
    src = state[slot.ours]
    return math.prod(expected_hf_shape(slot, src)) * src.element_size()


def export_model(
    model: MoETransformer,
    out: str | Path,
    hf_meta: dict[str, Any] | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write ``model`` as a HF folder at ``out`` (which must not exist). ``hf_meta``: what import
    recorded (``model_type``, special token ids), to export as the same family when it still fits."""
    out = Path(out)
    if out.exists():
        raise HFError(f"{out}: already exists; choose a new output folder")
    hf_meta = hf_meta or {}
    family = choose_family(model.cfg, hf_meta.get("model_type"))
    special = _special_ids(model, hf_meta)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    plan = weight_plan(model.cfg, family)
    config = config_to_hf(model.cfg, family, special)
    config["dtype"] = config["torch_dtype"] = str(state["embed.weight"].dtype).removeprefix("torch.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        gen = {k: v for k, v in special.items() if v is not None}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        for name, text in export_tokenizer_files(model.cfg.vocab_size, hf_meta).items():
            (tmp / name).write_text(text, encoding="utf-8")
        # Tensors are produced and written one at a time: peak memory is the model plus one tensor.
        sizes = {name: _nbytes(slot, state) for name, slot in plan.items()}
        groups = shard_groups(sizes, max_shard_bytes)
        weight_map = {}
        for i, names in enumerate(groups, start=1):
            file = SINGLE if len(groups) == 1 else f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            specs = [
                (n, expected_hf_shape(plan[n], state[plan[n].ours]), state[plan[n].ours].dtype) for n in names
            ]
            write_tensors(
                tmp / file, specs, lambda n: extract(plan[n], state)
            )  # one tensor in memory at a time
            weight_map.update(dict.fromkeys(names, file))
        if len(groups) > 1:
            index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
            (tmp / INDEX).write_text(json.dumps(index, indent=2))
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_hf(
    ckpt: str | Path,
    out: str | Path,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    notes: list[str] | None = None,
) -> Path:
    """Convert a moe-swarm checkpoint (a Lightning .ckpt, a sharded checkpoint folder, or a swarm.ckpt)
    into a HF folder. What the HF format cannot carry (a swarm checkpoint's checker) is appended to
    ``notes`` as a sentence for the user."""
    loaded = load_checkpoint(ckpt)
    meta = loaded.hparams.get("hf") if isinstance(loaded.hparams.get("hf"), dict) else None
    path = export_model(loaded.model, out, meta, max_shard_bytes)
    if loaded.swarm_state is not None and notes is not None:
        notes.append(
            f"{ckpt} is a swarm checkpoint: the generator was exported; its swarm state (checker, step "
            "settings) has no place in a Hugging Face folder, so keep the .ckpt for moe-swarm-swarm-eval"
        )
    return path
