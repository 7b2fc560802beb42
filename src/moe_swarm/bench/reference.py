"""Naive MoE baselines that exist only to be timed against (never used by the model)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from moe_swarm.model import ExpertPool


def dense_all_experts(
    pool: ExpertPool, x: Tensor, indices: Tensor, weights: Tensor, keep: Tensor | None = None
) -> Tensor:
    """Every expert on every token, then mask: E times the routed FLOPs, no dispatch at all."""
    n = x.shape[0]
    h = F.silu(torch.einsum("nd,edf->enf", x, pool.w1)) * torch.einsum("nd,edf->enf", x, pool.w3)
    ys = torch.einsum("enf,efd->end", h, pool.w2)  # (E, N, d)
    w = weights if keep is None else weights * keep
    gate = torch.zeros(n, pool.num_experts, dtype=torch.float32, device=x.device)
    gate.scatter_add_(1, indices, w.float())
    return torch.einsum("end,ne->nd", ys.float(), gate).to(x.dtype)
