"""``parallelize(model, mesh, cfg)``: FSDP2 per transformer block, plus expert parallelism over an "ep" mesh.

Order matters (FSDP2 groups parameters by the innermost ``fully_shard`` that owns them):
1. expert pools become :class:`ExpertParallelPool` (Shard(0) DTensors on "ep"), when ep > 1;
2. each expert pool is ``fully_shard``-ed over "dp_mod_ep" (the ranks holding the same experts);
3. each router is ``fully_shard``-ed on its own with an fp32 policy (routing stays fp32 under a
   bf16 ``param_dtype``);
4. each block over "dp" (all ranks), then the root (embedding, final norm, tied head).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from moe_swarm.model.transformer import MoETransformer
from moe_swarm.scale.parallel.config import ParallelConfig, ParallelConfigError
from moe_swarm.scale.parallel.expert_parallel import ExpertParallelPool
from moe_swarm.scale.parallel.mesh import ParallelMesh, build_mesh

__all__ = ["clip_grad_norm_", "is_parallelized", "parallelize"]


def is_parallelized(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def parallelize(
    model: MoETransformer, mesh: DeviceMesh | None = None, cfg: ParallelConfig | None = None
) -> ParallelMesh:
    """Shard ``model`` in place for FSDP2 (+ EP); returns the meshes used. Collective: call on every rank.

    ``mesh``: any mesh spanning the world (Lightning's ``ModelParallelStrategy`` passes its own); only
    its device type and size are used, the ("dp_mod_ep", "ep") layout is built from ``cfg``. Raises
    :class:`ParallelConfigError` before touching the model when the sizes do not fit.
    """
    cfg = cfg or ParallelConfig()
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "parallelize() needs an initialised process group (torchrun, or trainer=model_parallel); "
            "for one process just use the model as it is"
        )
    world = dist.get_world_size() if mesh is None else mesh.size()
    if world != dist.get_world_size():
        raise ValueError(
            f"the given mesh has {world} ranks but the process group has {dist.get_world_size()}"
        )
    layers = model.moe_layers
    if cfg.expert_parallel_size > 1 and not layers:
        raise ParallelConfigError(
            f"parallel.expert_parallel_size={cfg.expert_parallel_size} but the model has no MoE layers (ffn=dense); "
            "use expert_parallel_size=1"
        )
    cfg.check(world, layers[0].experts.num_experts if layers else 1)
    if is_parallelized(model):
        raise RuntimeError("this model is already parallelized; call parallelize() once per model")
    device_type = mesh.device_type if mesh is not None else _device_type(model)
    meshes = build_mesh(cfg, device_type, world)

    policy = MixedPrecisionPolicy(
        param_dtype=cfg.torch_dtype("param_dtype"), reduce_dtype=cfg.torch_dtype("reduce_dtype")
    )
    fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    reshard = cfg.reshard_after_forward
    for block in model.blocks:
        ignored: set[nn.Parameter] = set()
        if block.is_moe:
            layer = block.ffn
            if meshes.ep is not None:
                layer.experts = ExpertParallelPool(layer.experts, meshes.ep)
                if meshes.dp_mod_ep.size() > 1:
                    fully_shard(
                        layer.experts, mesh=meshes.dp_mod_ep, mp_policy=policy, reshard_after_forward=reshard
                    )
                else:  # each expert lives on one rank only: nothing to shard or reduce, skip FSDP's work
                    ignored = set(layer.experts.parameters())
            if cfg.param_dtype is not None:
                fully_shard(layer.router, mesh=meshes.dp, mp_policy=fp32, reshard_after_forward=reshard)
        fully_shard(
            block,
            mesh=meshes.dp,
            mp_policy=policy,
            reshard_after_forward=reshard,
            ignored_params=ignored or None,
        )
    # The root's parameters (embedding = tied head, final norm) are needed right after the last block.
    fully_shard(model, mesh=meshes.dp, mp_policy=policy, reshard_after_forward=False)
    return meshes


def _device_type(model: nn.Module) -> str:
    return next(model.parameters()).device.type


@torch.no_grad()
def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for DTensor gradients that live on different meshes.

    Expert gradients (on the 2-D ("dp_mod_ep", "ep") mesh) and the rest (on "dp") cannot be stacked
    into one norm; this takes each mesh's norm as a full (replicated) value, combines them, and scales
    every gradient by the same factor. Returns the total norm (a plain tensor, equal on every rank).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm_type = float(norm_type)
    by_mesh: dict[object, list[torch.Tensor]] = {}
    for g in grads:
        key = (g.device_mesh, tuple(g.placements)) if isinstance(g, DTensor) else None
        by_mesh.setdefault(key, []).append(g)
    parts = []
    for group in by_mesh.values():
        norm = torch.nn.utils.get_total_norm(group, norm_type)
        parts.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    if norm_type == float("inf"):
        total = torch.stack(parts).max()
    else:
        total = torch.stack([p**norm_type for p in parts]).sum() ** (1.0 / norm_type)
    # Scale the local shards: a plain scalar tensor times a DTensor is not treated as a replicated value
    # by every op (measured: clip_grads_with_norm_ scaled sharded gradients wrongly).
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        (g.to_local() if isinstance(g, DTensor) else g).mul_(coef.to(g.device))
    return total
