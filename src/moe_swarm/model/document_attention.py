"""Attention over packed documents: causal, and never across a document boundary.

Two backends compute the same thing. FlexAttention (``torch.nn.attention.flex_attention``) skips the
blocks of the score matrix that the document mask leaves empty, so it costs what the documents
cost, not what the whole window costs; it is used where it runs fused: on CUDA, compiled. Elsewhere
(CPU, and under attention dropout, which FlexAttention does not do) scaled-dot-product attention with
a (B, 1, T, T) boolean mask is the fallback. ``backend="flex"`` forces FlexAttention (on CPU it runs
eagerly, slowly: the tests use it to check that both backends agree).
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "flex", "sdpa")


class Documents(NamedTuple):
    """Packed documents of a batch: ``ids`` (B, T) and the same rule as a (B, 1, T, T) bool ``mask``."""

    ids: Tensor
    mask: Tensor


def flex_available(device: torch.device) -> bool:
    """True where FlexAttention runs fused: a CUDA device and a torch that has it."""
    if device.type != "cuda":
        return False
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q: Tensor, k: Tensor, v: Tensor, document_ids: Tensor, compiled: bool) -> Tensor:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def same_document_causal(b, h, q_idx, kv_idx):
        return (document_ids[b, q_idx] == document_ids[b, kv_idx]) & (q_idx >= kv_idx)

    b, _, t, _ = q.shape
    block_mask = create_block_mask(same_document_causal, b, None, t, t, device=q.device)
    fn = _compiled_flex() if compiled else flex_attention
    return fn(q, k, v, block_mask=block_mask, enable_gqa=k.shape[1] != q.shape[1])


def _expand(k: Tensor, v: Tensor, heads: int) -> tuple[Tensor, Tensor]:
    group = heads // k.shape[1]
    if group == 1:
        return k, v
    return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


def document_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    document_ids: Tensor,
    mask: Tensor,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> Tensor:
    """Attention of ``q`` (B, H, T, d) over ``k``/``v`` (B, H_kv, T, d) where a token sees earlier
    tokens of its own document only. ``mask``: the same rule as a (B, 1, T, T) bool tensor (the
    fallback's input; :func:`moe_swarm.model.transformer.document_layout` builds both)."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    use_flex = backend == "flex" or (backend == "auto" and dropout_p == 0.0 and flex_available(q.device))
    if use_flex:
        if dropout_p:
            raise ValueError("FlexAttention has no attention dropout; use backend='sdpa' or dropout=0")
        return _flex(q, k, v, document_ids, compiled=q.device.type == "cuda")
    k, v = _expand(k, v, q.shape[1])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


__all__ = ["BACKENDS", "document_attention", "flex_available"]
