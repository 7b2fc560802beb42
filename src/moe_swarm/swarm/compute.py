"""Compute accounting for swarm rows, so every comparison can be made at equal compute.

Definitions (per agent row of one ``generate`` call with the KV cache; P = prompt tokens + injected
thought slots, L = generated tokens of the row, EOS included):

- agent-forward-passes = L: the number of (row, decode step) model evaluations the row needed. The
  prefill step produces the first token, each later step one more. Steps a finished row spends
  waiting inside the batch for longer rows are not counted (they depend on the batch-mates, not on
  the problem, and a per-row-stopping server would not pay them).
- generated tokens = L (equal to the forward passes under KV-cache decoding; reported separately
  because they differ in meaning).
- tokens processed M = P + L - 1: every position that went through the transformer body once.
- FLOPs ~= 2 * body_params(k) * M + 2 * V * d * L + 4 * n_layers * d * M(M+1)/2
  where body_params(k) = active parameters minus the embedding table (a lookup, no FLOPs) and an
  untied output head, adjusted for a per-row router top-k override k; the second term is the output
  head, which ``generate`` runs only at positions that produce a token; the third is causal attention
  (QK^T and AV, 2 FLOPs per multiply-add, position i attends to i + 1 keys). Norms, RoPE, softmax and
  routing bookkeeping are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moe_swarm.model import MoETransformer


@dataclass(frozen=True)
class ModelCost:
    """The model sizes the FLOP formula needs (see the module docstring)."""

    body_params: int
    per_expert_params: int
    moe_layers: int
    model_top_k: int
    num_experts: int
    vocab_size: int
    d_model: int
    n_layers: int

    @classmethod
    def from_model(cls, model: MoETransformer) -> ModelCost:
        counts = model.count_parameters()
        head = 0 if model.cfg.tie_weights else model.lm_head.weight.numel()
        moe = model.moe_layers
        per_expert = 0
        if moe:
            ex = moe[0].experts
            per_expert = ex.w1[0].numel() + ex.w2[0].numel() + ex.w3[0].numel()
        return cls(
            body_params=counts.active - counts.embedding - head,
            per_expert_params=per_expert,
            moe_layers=len(moe),
            model_top_k=model.cfg.moe.router.top_k,
            num_experts=model.cfg.moe.num_experts,
            vocab_size=model.cfg.vocab_size,
            d_model=model.cfg.d_model,
            n_layers=model.cfg.n_layers,
        )

    def decode_flops(self, context: Tensor, fed: Tensor) -> Tensor:
        """FLOPs per row (float64) of feeding ``fed`` tokens one by one after ``context`` cached positions
        (a step decoded from a shared KV-cached prefix: no prefill; every fed token runs the body and
        the output head and attends to all earlier positions)."""
        context, fed = context.to(torch.int64), fed.to(torch.int64)
        keys = fed * context + fed * (fed + 1) // 2
        flops = (
            2 * self.body_params * fed
            + 2 * self.vocab_size * self.d_model * fed
            + 4 * self.n_layers * self.d_model * keys
        )
        return flops.to(torch.float64)

    def row_flops(self, context: Tensor, lengths: Tensor, top_k: Tensor | None = None) -> Tensor:
        """FLOPs per row (float64). ``context``: P per row; ``lengths``: L per row; ``top_k``: per-row
        router k (0 or None = the model's own k)."""
        context = context.to(torch.int64)
        lengths = lengths.to(torch.int64)
        processed = context + lengths - 1
        body = torch.full_like(processed, self.body_params)
        if top_k is not None and self.moe_layers:
            top_k = top_k.to(torch.int64)
            k = torch.where(top_k > 0, top_k, torch.full_like(top_k, self.model_top_k))
            k = k.clamp(1, self.num_experts)  # the router clamps an override the same way
            body = body + self.moe_layers * (k - self.model_top_k) * self.per_expert_params
        keys = processed * (processed + 1) // 2
        flops = (
            2 * body * processed
            + 2 * self.vocab_size * self.d_model * lengths
            + 4 * self.n_layers * self.d_model * keys
        )
        return flops.to(torch.float64)
