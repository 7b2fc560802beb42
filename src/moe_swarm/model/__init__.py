"""Sparse MoE building blocks in plain PyTorch (no Lightning, Hydra or gRPC)."""

from moe_swarm.model.config import DISPATCH_IMPLS, ROUTING_MODES, MoEConfig, RouterConfig, TransformerConfig
from moe_swarm.model.decoding import DECODE_MODES, Decoder, GenerationResult
from moe_swarm.model.experts import ExpertPool, grouped_mm_supported
from moe_swarm.model.kv_cache import KVCache, KVSpan
from moe_swarm.model.moe import MoEAux, MoELayer, SwiGLU
from moe_swarm.model.router import Router, RouterOutput, RoutingControl
from moe_swarm.model.transformer import ModelOutput, MoETransformer

__all__ = [
    "DECODE_MODES",
    "DISPATCH_IMPLS",
    "ROUTING_MODES",
    "Decoder",
    "ExpertPool",
    "GenerationResult",
    "KVCache",
    "KVSpan",
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
