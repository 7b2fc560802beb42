"""The DeviceMesh a run uses: one "dp" dimension over all ranks, split as ("dp_mod_ep", "ep") for experts."""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from moe_swarm.scale.parallel.config import ParallelConfig

__all__ = ["ParallelMesh", "build_mesh"]


@dataclass
class ParallelMesh:
    """``dp``: every rank (FSDP2 of non-expert weights, the data-parallel sampler).
    ``ep``: ranks that split one expert pool (None without expert parallelism).
    ``dp_mod_ep``: ranks that hold the same experts (FSDP2 of expert weights; None without EP).
    """

    dp: DeviceMesh
    ep: DeviceMesh | None = None
    dp_mod_ep: DeviceMesh | None = None

    @property
    def ep_size(self) -> int:
        return 1 if self.ep is None else self.ep.size()


def build_mesh(cfg: ParallelConfig, device_type: str = "cpu", world_size: int | None = None) -> ParallelMesh:
    """Create the meshes (a collective: every rank calls it). Rank r sits at (r // ep, r % ep), so an ep
    group is ``ep`` consecutive ranks: on GPUs, experts exchange tokens within a node first."""
    world = dist.get_world_size() if world_size is None else world_size
    cfg.check_world(world)
    ep = cfg.expert_parallel_size
    if ep == 1:
        return ParallelMesh(dp=init_device_mesh(device_type, (world,), mesh_dim_names=("dp",)))
    mesh = init_device_mesh(device_type, (world // ep, ep), mesh_dim_names=("dp_mod_ep", "ep"))
    return ParallelMesh(dp=mesh._flatten("dp"), ep=mesh["ep"], dp_mod_ep=mesh["dp_mod_ep"])
