"""Peer MoE layers for side-by-side timing: Hugging Face transformers' ``MixtralSparseMoeBlock``.

Optional: needs ``pip install -e ".[peers]"``. The peer is built on *our* layer's weights (router,
gate/up, down) so both compute the same function; the moe_layer suite checks that before timing.
"""

from __future__ import annotations

import torch
from torch import nn

from moe_swarm.model import MoELayer

# Every experts backend transformers ships for Mixtral, in the order they are tried.
HF_BACKENDS = ("grouped_mm", "batched_mm", "eager")


def transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def hf_mixtral_block(layer: MoELayer, backend: str) -> nn.Module:
    """A ``MixtralSparseMoeBlock`` with the experts ``backend`` and a copy of ``layer``'s weights.

    Only our Mixtral-equivalent setting maps onto it: softmax top-k with renormalised weights,
    dropless, no shared expert, route_scale 1.
    """
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    r = layer.router.cfg
    if r.mode != "softmax_topk" or not r.renormalize or r.capacity_factor is not None or r.route_scale != 1:
        raise ValueError("the HF Mixtral block only matches softmax top-k, renormalised, dropless routing")
    if layer.shared_expert is not None:
        raise ValueError("the HF Mixtral block has no shared expert")
    pool = layer.experts
    config = MixtralConfig(
        hidden_size=pool.d_model,
        intermediate_size=pool.d_ff,
        num_local_experts=pool.num_experts,
        num_experts_per_tok=r.top_k,
        router_jitter_noise=0.0,
    )
    config._experts_implementation = backend
    with torch.device(layer.router.weight.device):
        block = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        block.gate.weight.copy_(layer.router.weight)
        # HF stores (E, out, in): gate_up = [W1^T; W3^T] (gate first), down = W2^T.
        block.experts.gate_up_proj.copy_(torch.cat([pool.w1, pool.w3], dim=-1).transpose(1, 2))
        block.experts.down_proj.copy_(pool.w2.transpose(1, 2))
    p = pool.w1
    return block.to(p.device, p.dtype)
