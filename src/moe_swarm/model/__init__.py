"""Sparse MoE building blocks in plain PyTorch (no Lightning, Hydra or gRPC)."""

from moe_swarm.model.experts import DISPATCH_IMPLS, ExpertPool, grouped_mm_supported
from moe_swarm.model.moe import MoEAux, MoELayer, SwiGLU
from moe_swarm.model.router import ROUTING_MODES, Router, RouterOutput, RoutingControl
from moe_swarm.model.transformer import (
    GenerationResult,
    KVCache,
    ModelOutput,
    MoETransformer,
    RowRouting,
    TransformerConfig,
)

__all__ = [
    "DISPATCH_IMPLS",
    "ROUTING_MODES",
    "ExpertPool",
    "GenerationResult",
    "KVCache",
    "ModelOutput",
    "MoEAux",
    "MoELayer",
    "MoETransformer",
    "Router",
    "RouterOutput",
    "RoutingControl",
    "RowRouting",
    "SwiGLU",
    "TransformerConfig",
    "grouped_mm_supported",
]
