"""Sparse MoE building blocks in plain PyTorch (no Lightning, Hydra or gRPC)."""

from moe_swarm.model.config import DISPATCH_IMPLS, ROUTING_MODES, MoEConfig, RouterConfig, TransformerConfig
from moe_swarm.model.experts import ExpertPool, grouped_mm_supported
from moe_swarm.model.moe import MoEAux, MoELayer, SwiGLU
from moe_swarm.model.router import Router, RouterOutput, RoutingControl
from moe_swarm.model.transformer import GenerationResult, KVCache, ModelOutput, MoETransformer

__all__ = [
    "DISPATCH_IMPLS",
    "ROUTING_MODES",
    "ExpertPool",
    "GenerationResult",
    "KVCache",
    "ModelOutput",
    "MoEAux",
    "MoEConfig",
    "MoELayer",
    "MoETransformer",
    "Router",
    "RouterConfig",
    "RouterOutput",
    "RoutingControl",
    "SwiGLU",
    "TransformerConfig",
    "grouped_mm_supported",
]
