"""Fill a parallelized model's local shards straight from a Hugging Face folder.

Under ``trainer=model_parallel`` the model is built on the meta device, sharded (FSDP2 over the
data-parallel mesh, experts over the expert-parallel mesh: every placement splits dimension 0), then
materialised empty; each rank then reads from the safetensors files only the rows its shards hold
(:meth:`ShardReader.read_rows`: one contiguous byte range per tensor), so no rank ever holds, or reads,
the whole checkpoint. Per-expert tensors are read only by the ranks that hold that expert.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from moe_swarm.hf.importer import plan_folder, read_hf_config
from moe_swarm.hf.safetensors_io import ShardReader
from moe_swarm.hf.weights import Slot
from moe_swarm.model.transformer import MoETransformer, rope_tables


def _row_window(t: Tensor) -> tuple[Tensor, int]:
    """(the local tensor, its first global row): every placement here shards dimension 0."""
    if not isinstance(t, DTensor):
        return t, 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    if any(o != 0 for o in offset[1:]) or tuple(shape[1:]) != tuple(t.shape[1:]):
        raise NotImplementedError(f"a shard that splits a dimension other than 0: {t.placements}")
    return t.to_local(), int(offset[0])


def _fill(slot: Slot, reader: ShardReader, name: str, local: dict[str, tuple[Tensor, int]]) -> None:
    """Copy the rows of HF tensor ``name`` that this rank holds into its local shard(s)."""
    dest, first = local[slot.ours]
    n = dest.shape[0]
    if slot.kind == "copy":
        if n:
            dest.copy_(reader.read_rows(name, first, first + n))
    elif slot.kind == "rows":
        lo, hi = max(first, slot.start), min(first + n, slot.end)
        if lo < hi:
            dest[lo - first : hi - first].copy_(reader.read_rows(name, lo - slot.start, hi - slot.start))
    elif slot.kind == "expert":
        if first <= slot.index < first + n:
            dest[slot.index - first].copy_(reader.read(name).t())
    elif slot.kind in ("fused_gate_up", "fused_down"):
        if not n:
            return
        hf = reader.read_rows(name, first, first + n)  # dim 0 = experts, as in our pool
        if slot.kind == "fused_down":
            dest.copy_(hf.transpose(1, 2))
        else:
            ff = dest.shape[2]
            dest.copy_(hf[:, :ff].transpose(1, 2))
            up, up_first = local[slot.ours.replace(".w1", ".w3")]
            assert up_first == first, "w1 and w3 are sharded alike"
            up.copy_(hf[:, ff:].transpose(1, 2))
    else:
        raise ValueError(f"unknown slot kind {slot.kind}")


def check_folder(model: MoETransformer, folder: str | Path) -> None:
    """:class:`HFError` naming the file and tensor if ``folder`` cannot fill ``model``; reads headers only."""
    folder = Path(folder)
    plan_folder(folder, read_hf_config(folder)[0]["model_type"], model.cfg, model.state_dict())


@torch.no_grad()
def load_local_shards(model: MoETransformer, folder: str | Path, device: str | torch.device = "cpu") -> int:
    """Materialise ``model`` (built on the meta device, and parallelized there where it runs sharded)
    on ``device`` and fill each rank's shards from ``folder``, cast to the model's dtype; returns the
    tensor bytes this rank read. Every rank calls it; it reads files and sends nothing. An unsharded
    model is filled whole (one rank's slice is then all of it)."""
    folder = Path(folder)
    cfg = model.cfg
    names, plan, readers = plan_folder(
        folder, read_hf_config(folder)[0]["model_type"], cfg, model.state_dict()
    )
    model.to_empty(device=device)
    local = {key: _row_window(t) for key, t in model.state_dict().items()}
    for name in names:
        _fill(plan[name], readers[name], name, local)
    for key, (tensor, _) in local.items():
        if key.endswith("router.bias"):  # sigmoid-bias balancing buffer: unused by softmax routing
            tensor.zero_()
    if cfg.tie_weights and not isinstance(model.lm_head.weight, DTensor):
        model.lm_head.weight = model.embed.weight  # to_empty kept the tie; say it where it matters
    cos, sin = rope_tables(cfg.resolved_head_dim, cfg.max_seq_len, cfg.rope_base)
    model.rope_cos.copy_(cos)
    model.rope_sin.copy_(sin)
    return sum(r.bytes_read for r in set(readers.values()))  # one reader per file


__all__ = ["check_folder", "load_local_shards"]
