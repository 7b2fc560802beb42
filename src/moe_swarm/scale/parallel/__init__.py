"""Scale-out past one device's memory, in plain torch.distributed (no Lightning).

FSDP2 (``fully_shard``) per transformer block over a DeviceMesh, and expert parallelism: experts
as ``Shard(0)`` DTensors on an "ep" sub-mesh with all-to-all token dispatch. Lightning reaches this
through ``MoELanguageModel.configure_model`` under ``trainer=model_parallel``; a plain PyTorch loop
calls :func:`parallelize` itself after ``dist.init_process_group``.
"""

from moe_swarm.scale.parallel.config import ParallelConfig, ParallelConfigError
from moe_swarm.scale.parallel.expert_parallel import ExpertParallelPool, scale_grad
from moe_swarm.scale.parallel.mesh import ParallelMesh, build_mesh
from moe_swarm.scale.parallel.parallelize import clip_grad_norm_, is_parallelized, parallelize

__all__ = [
    "ExpertParallelPool",
    "ParallelConfig",
    "ParallelConfigError",
    "ParallelMesh",
    "build_mesh",
    "clip_grad_norm_",
    "is_parallelized",
    "parallelize",
    "scale_grad",
]
