"""MoELayer: router + expert pool (+ optional always-on shared experts), a drop-in FFN block."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_swarm.model.config import MoEConfig
from moe_swarm.model.experts import ExpertPool
from moe_swarm.model.router import Router, RouterOutput, RoutingControl


class SwiGLU(nn.Module):
    """Dense SwiGLU feed-forward: the shared expert, and the FFN of the dense baseline."""

    def __init__(
        self, d_model: int, d_ff: int, init_std: float = 0.02, out_init_std: float | None = None
    ) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w3 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)
        nn.init.normal_(self.w1.weight, std=init_std)
        nn.init.normal_(self.w3.weight, std=init_std)
        nn.init.normal_(self.w2.weight, std=init_std if out_init_std is None else out_init_std)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


@dataclass
class MoEAux:
    """Aux losses (unscaled) and routing stats of one MoE layer for one forward pass."""

    load_balance_loss: Tensor
    z_loss: Tensor
    counts: Tensor  # (E,)
    dropped_frac: Tensor
    entropy: Tensor
    load_max_over_mean: Tensor
    routed_counts: Tensor  # (E,) routed assignments before capacity drops (balance statistics)
    mean_probs: Tensor  # (E,) mean routing probability, with gradient (balance statistics)

    @classmethod
    def from_router(cls, r: RouterOutput) -> MoEAux:
        return cls(
            r.load_balance_loss,
            r.z_loss,
            r.counts,
            r.dropped_frac,
            r.entropy,
            r.load_max_over_mean,
            r.routed_counts,
            r.mean_probs,
        )


class MoELayer(nn.Module):
    """Sparse MoE FFN. Defaults follow Mixtral: softmax top-k with renormalised weights, dropless.

    Configured by one :class:`MoEConfig` (router settings in ``cfg.router``), e.g.
    ``MoELayer(64, MoEConfig(num_experts=8, d_ff=128))``.
    ``forward(x: (B, T, d_model)) -> (y, aux)``; parameters are ``router.weight`` (E, d_model) and
    ``experts.w1/w3`` (E, d_model, d_ff), ``experts.w2`` (E, d_ff, d_model). The
    ``num_shared_experts`` shared experts are one ``SwiGLU`` of width ``n * shared_expert_d_ff``
    (``shared_expert``): a sum of n SwiGLUs is one SwiGLU over their concatenated hidden units, so
    shared expert j is rows/columns ``[j*d, (j+1)*d)`` of its weights.
    """

    def __init__(
        self, d_model: int, cfg: MoEConfig, layer_id: int = 0, out_init_std: float | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.router = Router(d_model, cfg.num_experts, cfg.router, layer_id=layer_id)
        self.experts = ExpertPool(
            cfg.num_experts, d_model, cfg.d_ff, dispatch=cfg.dispatch, out_init_std=out_init_std
        )
        self.shared_expert = (
            SwiGLU(d_model, cfg.shared_d_ff, out_init_std=out_init_std) if cfg.shared_d_ff > 0 else None
        )
        # Qwen2-MoE: the shared expert's output is scaled per token by sigmoid(x . g).
        self.shared_expert_gate = nn.Linear(d_model, 1, bias=False) if cfg.shared_expert_gate else None
        if self.shared_expert_gate is not None:
            nn.init.normal_(self.shared_expert_gate.weight, std=0.02)

    def forward(
        self,
        x: Tensor,
        pad_mask: Tensor | None = None,
        control: RoutingControl | None = None,
        compute_aux: bool = True,
    ) -> tuple[Tensor, MoEAux | None]:
        """``x``: (B, T, d). ``pad_mask``: (B, T) bool, True = real token. ``control``: per-token, flattened.

        ``compute_aux=False`` (decoding) skips aux losses and routing stats and returns ``aux=None``.
        """
        b, t, d = x.shape
        flat = x.reshape(b * t, d)
        mask = None if pad_mask is None else pad_mask.reshape(b * t)
        routed = self.router(flat, mask, control, compute_aux=compute_aux)
        y = self.experts(flat, routed.indices, routed.weights, routed.keep)
        if self.shared_expert is not None:
            shared = self.shared_expert(flat)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(flat)) * shared
            y = y + shared
        return y.view(b, t, d), MoEAux.from_router(routed) if compute_aux else None
