"""Decoder-only byte-level LM whose FFN blocks are sparse MoE (or dense, for honest comparisons).

RoPE, RMSNorm, causal attention through ``scaled_dot_product_attention`` (grouped-query, optional q/k
RMSNorm and q/k/v bias), tied or untied embeddings; a forward pass over a KV cache and a static-shape
``decode_step``. Decoding itself (the token loop, sampling,
compiled steps) is the engine in ``moe_swarm.model.decoding``; ``generate`` delegates to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_swarm.model.config import DEFAULT_VOCAB_SIZE, MoEConfig, RouterConfig, TransformerConfig
from moe_swarm.model.decoding import GenerationResult, sample_next
from moe_swarm.model.decoding import generate as decoding_generate
from moe_swarm.model.document_attention import Documents, document_attention
from moe_swarm.model.kv_cache import KVCache
from moe_swarm.model.moe import MoEAux, MoELayer, SwiGLU
from moe_swarm.model.router import RoutingControl

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "GenerationResult",
    "KVCache",
    "ModelOutput",
    "MoEConfig",
    "MoETransformer",
    "RouterConfig",
    "RoutingControl",
    "TransformerConfig",
    "sample_next",
]


def rope_tables(head_dim: int, max_len: int, base: float) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., :h/2], x[..., h/2:]). ``cos``/``sin``: (B, 1, T, h/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def document_layout(document_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Positions that restart at each document start, and the (B, 1, T, T) mask that lets a token see
    only earlier tokens of its own document (for packed sequences)."""
    b, t = document_ids.shape
    index = torch.arange(t, device=document_ids.device).expand(b, t)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    positions = index - torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    same_doc = document_ids[:, :, None] == document_ids[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=document_ids.device).tril()
    return positions, (same_doc & causal)[:, None]


class CausalSelfAttention(nn.Module):
    """Causal attention with RoPE; grouped-query when ``n_kv_heads < n_heads`` (the cache holds only the
    ``n_kv_heads`` key/value heads). ``qkv`` is one fused projection, rows ordered q, k, v."""

    def __init__(self, cfg: TransformerConfig, layer: int, out_std: float) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.kv_heads
        self.head_dim = cfg.resolved_head_dim
        self.layer = layer
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.qkv = nn.Linear(cfg.d_model, q_dim + 2 * kv_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(q_dim, cfg.d_model, bias=False)
        self.dropout = cfg.dropout
        nn.init.normal_(self.qkv.weight, std=0.02)
        nn.init.normal_(self.proj.weight, std=out_std)
        if cfg.qkv_bias:
            nn.init.zeros_(self.qkv.bias)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm != "none":
            per_head = cfg.qk_norm == "head"
            self.q_norm = nn.RMSNorm(self.head_dim if per_head else q_dim, eps=cfg.norm_eps)
            self.k_norm = nn.RMSNorm(self.head_dim if per_head else kv_dim, eps=cfg.norm_eps)

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries (B, H, T, head_dim), keys and values (B, H_kv, T, head_dim); q and k rotated."""
        b, t, _ = x.shape
        h, hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        if hkv == h and self.qk_norm == "none":  # multi-head: the original fused path, bit for bit
            q, k, v = self.qkv(x).view(b, t, 3, h, hd).permute(2, 0, 3, 1, 4)
            return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v
        q, k, v = self.qkv(x).split([h * hd, hkv * hd, hkv * hd], dim=-1)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (z.view(b, t, -1, hd).transpose(1, 2) for z in (q, k, v))
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _expand_kv(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Repeat each key/value head for its group of query heads (query head i reads kv head i // group)."""
        group = self.n_heads // self.n_kv_heads
        if group == 1:
            return k, v
        return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None, doc_mask: Documents | None = None
    ) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        if doc_mask is not None:  # packed documents: causal and within one document
            drop = self.dropout if self.training else 0.0
            y = document_attention(q, k, v, doc_mask.ids, doc_mask.mask, drop)
            return self.proj(y.transpose(1, 2).reshape(b, t, -1))
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(self.layer, k, v)
        k, v = self._expand_kv(k, v)
        drop = self.dropout if self.training else 0.0
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        elif t == 1:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        else:  # a chunk appended to a non-empty cache
            allowed = (
                torch.arange(past + t, device=x.device)[None, :]
                <= (past + torch.arange(t, device=x.device))[:, None]
            )
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=drop)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))

    def decode(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache, pos: Tensor) -> Tensor:
        """One new token per row at position ``pos`` ((1,) int64), with static shapes.

        Writes k/v in place at ``pos`` and attends over the whole preallocated cache with a mask,
        so every step has the same shapes and no Python int changes: what lets the step compile once
        (and be captured as a CUDA graph).
        """
        b, t, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        keys, values, visible = cache.write_at(self.layer, pos, k, v)
        keys, values = self._expand_kv(keys.to(q.dtype), values.to(q.dtype))
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer: int) -> None:
        super().__init__()
        out_std = 0.02 / math.sqrt(2 * cfg.n_layers)
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg, layer, out_std)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.is_moe = cfg.is_moe_layer(layer)
        if self.is_moe:
            self.ffn = MoELayer(cfg.d_model, cfg.moe, layer_id=layer, out_init_std=out_std)
        else:
            self.ffn = SwiGLU(cfg.d_model, cfg.resolved_dense_d_ff, out_init_std=out_std)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x, cos, sin, cache, pad_mask, control, with_aux=True, doc_mask=None
    ) -> tuple[Tensor, MoEAux | None]:
        x = x + self.resid_drop(self.attn(self.attn_norm(x), cos, sin, cache, doc_mask))
        h = self.ffn_norm(x)
        if self.is_moe:
            y, aux = self.ffn(h, pad_mask, control, compute_aux=with_aux)
        else:
            y, aux = self.ffn(h), None
        return x + self.resid_drop(y), aux

    def decode(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache, pos: Tensor, control) -> Tensor:
        x = x + self.attn.decode(self.attn_norm(x), cos, sin, cache, pos)
        h = self.ffn_norm(x)
        y = self.ffn(h, None, control, compute_aux=False)[0] if self.is_moe else self.ffn(h)
        return x + y


@dataclass
class ModelOutput:
    logits: Tensor  # (B, T, V), or (B, 1, V) with last_only
    loss: Tensor | None  # mean next-token cross-entropy over targets != -100
    aux: list[MoEAux]  # one per MoE layer
    hidden: Tensor  # (B, T, d) final-norm hidden states

    @property
    def load_balance_loss(self) -> Tensor:
        return _mean_aux(self.aux, "load_balance_loss", self.logits)

    @property
    def z_loss(self) -> Tensor:
        return _mean_aux(self.aux, "z_loss", self.logits)


def _mean_aux(aux: list[MoEAux], name: str, like: Tensor) -> Tensor:
    if not aux:
        return like.new_zeros((), dtype=torch.float32)
    return torch.stack([getattr(a, name) for a in aux]).mean()


@dataclass
class ParamCount:
    total: int
    active: int  # parameters touched per token (k of E experts)
    embedding: int
    details: dict = field(default_factory=dict)


class MoETransformer(nn.Module):
    """Decoder LM. ``forward(idx, targets)`` for training; ``generate`` for decoding with a KV cache."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.embed.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=0.02)
        cos, sin = rope_tables(cfg.resolved_head_dim, cfg.max_seq_len, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def moe_layers(self) -> list[MoELayer]:
        return [b.ffn for b in self.blocks if b.is_moe]

    def count_parameters(self) -> ParamCount:
        total = sum(p.numel() for p in self.parameters())
        inactive = 0
        for layer in self.moe_layers:
            # From shapes, not by indexing: the weights may be sharded DTensors (indexing one is a collective).
            experts = layer.experts
            per_expert = (experts.w1.numel() + experts.w2.numel() + experts.w3.numel()) // experts.num_experts
            inactive += (layer.experts.num_experts - layer.router.cfg.top_k) * per_expert
        emb = self.embed.weight.numel()
        return ParamCount(
            total=total, active=total - inactive, embedding=emb, details={"moe_layers": len(self.moe_layers)}
        )

    def train_flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: ``6 N + 12 n_layers d_model T`` (PaLM, appendix B), N = the matmul
        parameters a token touches (active parameters minus the embedding lookup, plus the head)."""
        count = self.count_parameters()
        head = self.cfg.vocab_size * self.cfg.d_model
        return (
            6.0 * (count.active - count.embedding + head)
            + 12.0 * self.cfg.n_layers * self.cfg.d_model * seq_len
        )

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        pad_mask: Tensor | None = None,
        cache: KVCache | None = None,
        routing: RoutingControl | None = None,
        prefix_embeds: Tensor | None = None,
        last_only: bool = False,
        with_aux: bool = True,
        document_ids: Tensor | None = None,
    ) -> ModelOutput:
        """``idx``: (B, T) token ids. ``prefix_embeds``: optional (B, S, d) slots placed before the
        tokens (swarm thought injection); logits/targets refer to the token positions only.
        ``with_aux=False`` skips router losses/stats (``aux`` is then empty): for decoding.
        ``document_ids``: optional (B, T) ids of the packed document each token belongs to (equal ids
        are contiguous): attention stays inside a document and RoPE positions restart at its start."""
        b, t = idx.shape
        x = self.embed(idx)
        s = 0
        if prefix_embeds is not None:
            s = prefix_embeds.shape[1]
            x = torch.cat([prefix_embeds.to(x.dtype), x], dim=1)
            if pad_mask is not None:
                pad_mask = torch.cat([pad_mask.new_ones(b, s), pad_mask], dim=1)
        past = cache.length if cache is not None else 0
        total = s + t
        if past + total > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence of {past + total} positions exceeds max_seq_len={self.cfg.max_seq_len}; "
                "shorten the input or raise model.max_seq_len"
            )
        positions = torch.arange(past, past + total, device=idx.device).expand(b, total)
        cos = self.rope_cos[past : past + total][None, None]
        sin = self.rope_sin[past : past + total][None, None]
        doc_mask = None
        if document_ids is not None:
            if cache is not None or prefix_embeds is not None:
                raise ValueError("document_ids work on a plain forward pass (no cache, no prefix_embeds)")
            restart, mask = document_layout(document_ids)
            doc_mask = Documents(document_ids, mask)
            cos, sin = self.rope_cos[restart][:, None], self.rope_sin[restart][:, None]
        control = routing.for_tokens(positions) if routing is not None else None
        x = self.drop(x)
        aux: list[MoEAux] = []
        for block in self.blocks:
            x, a = block(x, cos, sin, cache, pad_mask, control, with_aux, doc_mask)
            if a is not None:
                aux.append(a)
        if cache is not None:
            cache.advance(total)
        hidden = self.norm(x)[:, s:]
        logits = self.lm_head(hidden[:, -1:] if last_only else hidden)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
            )
        return ModelOutput(logits=logits, loss=loss, aux=aux, hidden=hidden)

    def decode_step(
        self, token: Tensor, pos: Tensor, cache: KVCache, routing: RoutingControl | None = None
    ) -> tuple[Tensor, Tensor]:
        """Logits (B, V) and final hidden state (B, d) for one new token per row at ``pos``.

        ``token``: (B, 1); ``pos``: (1,) int64 absolute position (the cache must hold ``pos``
        earlier positions). Static shapes and no host sync, so ``torch.compile`` traces it once;
        the caller advances the cache (``moe_swarm.model.decoding.CachedSteps``).
        """
        x = self.embed(token)
        cos = self.rope_cos.index_select(0, pos)[None, None]
        sin = self.rope_sin.index_select(0, pos)[None, None]
        control = routing.for_tokens(pos.expand(token.shape[0], 1)) if routing is not None else None
        for block in self.blocks:
            x = block.decode(x, cos, sin, cache, pos, control)
        hidden = self.norm(x)[:, -1]
        return self.lm_head(hidden), hidden

    # Decoding is the engine's (moe_swarm.model.decoding); as a method: model.generate(idx, n, ...).
    generate = decoding_generate
