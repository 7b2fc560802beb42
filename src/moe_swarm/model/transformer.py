"""Decoder-only byte-level LM whose FFN blocks are sparse MoE (or dense, for honest comparisons).

RoPE, RMSNorm, causal attention through ``scaled_dot_product_attention``, tied embeddings, a
preallocated KV cache and ``generate()`` with per-row temperature, top-k, seed and routing
perturbation (a batch row is one swarm agent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_swarm.model.config import DEFAULT_VOCAB_SIZE, MoEConfig, RouterConfig, TransformerConfig
from moe_swarm.model.moe import MoEAux, MoELayer, SwiGLU
from moe_swarm.model.router import RoutingControl, counter_gumbel

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

DECODE_MODES = ("eager", "static", "compiled", "cudagraphs")
SAMPLING_STREAM = 0x5A17  # keeps sampling noise independent of the per-layer routing noise


class KVCache:
    """Preallocated keys/values for every layer: (n_layers, B, H, max_len, head_dim)."""

    def __init__(self, cfg: TransformerConfig, batch_size: int, max_len: int, device, dtype) -> None:
        hd = cfg.d_model // cfg.n_heads
        shape = (cfg.n_layers, batch_size, cfg.n_heads, max_len, hd)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} > max_len={self.max_len}; raise max_seq_len")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def rope_tables(head_dim: int, max_len: int, base: float) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., :h/2], x[..., h/2:]). ``cos``/``sin``: (B, 1, T, h/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer: int, out_std: float) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.layer = layer
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout
        nn.init.normal_(self.qkv.weight, std=0.02)
        nn.init.normal_(self.proj.weight, std=out_std)

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys (both rotated) and values, each (B, H, T, head_dim)."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None) -> Tensor:
        b, t, d = x.shape
        q, k, v = self._qkv(x, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(self.layer, k, v)
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
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def decode(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache, pos: Tensor) -> Tensor:
        """One new token per row at position ``pos`` ((1,) int64), with static shapes.

        Writes k/v in place at ``pos`` and attends over the whole preallocated cache with a mask,
        so every step has the same shapes and no Python int changes: what lets the step compile once
        (and be captured as a CUDA graph).
        """
        b, t, d = x.shape
        q, k, v = self._qkv(x, cos, sin)
        keys, values = cache.k[self.layer], cache.v[self.layer]
        keys.index_copy_(2, pos, k.to(keys.dtype))
        values.index_copy_(2, pos, v.to(values.dtype))
        visible = (torch.arange(cache.max_len, device=x.device) <= pos)[None, :]  # (1, max_len)
        y = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=visible)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


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

    def forward(self, x, cos, sin, cache, pad_mask, control, with_aux=True) -> tuple[Tensor, MoEAux | None]:
        x = x + self.resid_drop(self.attn(self.attn_norm(x), cos, sin, cache))
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
class GenerationResult:
    tokens: Tensor  # (B, max_new_tokens) generated ids; PAD after a row's EOS
    token_logprobs: Tensor  # (B, max_new_tokens) log p(token) under the model (temperature 1); 0 after EOS
    lengths: Tensor  # (B,) generated tokens per row, EOS included
    hidden_last: Tensor  # (B, d) final hidden state that produced the row's last token
    hidden_mean: Tensor  # (B, d) mean final hidden state over the row's generated span
    forward_passes: int  # batched forward calls made (prefill included)
    tokens_processed: int = 0  # token positions run through the model (prefill + decode), all rows

    @property
    def sequence_logprob(self) -> Tensor:
        return self.token_logprobs.sum(dim=1)


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
        cos, sin = rope_tables(cfg.d_model // cfg.n_heads, cfg.max_seq_len, cfg.rope_base)
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
    ) -> ModelOutput:
        """``idx``: (B, T) token ids. ``prefix_embeds``: optional (B, S, d) slots placed before the
        tokens (swarm thought injection); logits/targets refer to the token positions only.
        ``with_aux=False`` skips router losses/stats (``aux`` is then empty): for decoding."""
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
        control = routing.for_tokens(positions) if routing is not None else None
        x = self.drop(x)
        aux: list[MoEAux] = []
        for block in self.blocks:
            x, a = block(x, cos, sin, cache, pad_mask, control, with_aux)
            if a is not None:
                aux.append(a)
        if cache is not None:
            cache.length += total
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
        ``cache.length`` is advanced by the caller.
        """
        x = self.embed(token)
        cos = self.rope_cos.index_select(0, pos)[None, None]
        sin = self.rope_sin.index_select(0, pos)[None, None]
        control = routing.for_tokens(pos.expand(token.shape[0], 1)) if routing is not None else None
        for block in self.blocks:
            x = block.decode(x, cos, sin, cache, pos, control)
        hidden = self.norm(x)[:, -1]
        return self.lm_head(hidden), hidden

    def compiled_decode_step(self, mode: str | None = None):
        """``decode_step`` compiled once per mode (``"reduce-overhead"`` = CUDA graphs on CUDA)."""
        cache = self.__dict__.setdefault("_compiled_decode", {})
        if mode not in cache:
            cache[mode] = torch.compile(self.decode_step, dynamic=False, mode=mode)
        return cache[mode]

    def static_cache(self, batch_size: int, device, dtype) -> KVCache:
        """One reusable ``max_seq_len`` KV cache per (batch size, device, dtype) for compiled decoding.

        Same shapes and addresses on every call: the compiled step is traced once for every prompt
        and output length, and CUDA graphs can capture its in-place cache writes. Positions past
        the current length are masked, so the cache is not cleared between calls. Not thread-safe:
        one compiled ``generate`` at a time per model and batch size.
        """
        caches = self.__dict__.setdefault("_static_caches", {})
        key = (batch_size, torch.device(device), dtype)
        if key not in caches:
            cache = KVCache(self.cfg, batch_size, self.cfg.max_seq_len, device, dtype)
            torch._dynamo.mark_static_address(cache.k)
            torch._dynamo.mark_static_address(cache.v)
            caches[key] = cache
        cache = caches[key]
        cache.length = 0
        return cache

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float | Tensor = 0.0,
        top_k: int | Tensor | None = None,
        seed: int | Tensor = 0,
        routing: RoutingControl | None = None,
        eos_id: int | None = None,
        pad_id: int = 256,
        prefix_embeds: Tensor | None = None,
        use_cache: bool = True,
        decode: str = "eager",
    ) -> GenerationResult:
        """Decode up to ``max_new_tokens`` for a (B, T) batch of equal-length prompts.

        Per-row ``temperature`` (0 = greedy), ``top_k`` (sampling) and ``seed`` may be (B,) tensors.
        Sampling uses Gumbel-max with counter-based noise keyed by (seed, position), so a row's
        output does not depend on what else is in the batch. ``use_cache=False`` recomputes the
        full sequence each step (the reference for tests and benchmarks). ``decode`` picks how the
        KV-cached steps after the prefill run: ``"eager"`` (the plain forward), ``"static"``
        (:meth:`decode_step`: fixed shapes over the whole cache), ``"compiled"`` (that step under
        ``torch.compile``) or ``"cudagraphs"`` (compiled with ``mode="reduce-overhead"``).
        """
        if decode not in DECODE_MODES:
            raise ValueError(f"unknown decode {decode!r}; choose one of {DECODE_MODES}")
        step_fn = None  # "eager": the plain forward
        if decode == "static":
            step_fn = self.decode_step
        elif decode in ("compiled", "cudagraphs"):
            step_fn = self.compiled_decode_step("reduce-overhead" if decode == "cudagraphs" else None)
        b, t0 = idx.shape
        dev = idx.device
        temp = torch.as_tensor(temperature, dtype=torch.float32, device=dev).expand(b)
        seeds = torch.as_tensor(seed, dtype=torch.int64, device=dev).expand(b)
        k_rows = None if top_k is None else torch.as_tensor(top_k, dtype=torch.int64, device=dev).expand(b)
        s = 0 if prefix_embeds is None else prefix_embeds.shape[1]
        cache = None
        if use_cache:
            dtype = next(self.parameters()).dtype
            if decode in ("compiled", "cudagraphs"):
                cache = self.static_cache(b, dev, dtype)
            else:
                cache = KVCache(self.cfg, b, s + t0 + max_new_tokens, dev, dtype)
        tokens = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=dev)
        logprobs = torch.zeros(b, max_new_tokens, device=dev)
        finished = torch.zeros(b, dtype=torch.bool, device=dev)
        lengths = torch.zeros(b, dtype=torch.long, device=dev)
        hid_sum = torch.zeros(b, self.cfg.d_model, device=dev)
        hid_last = torch.zeros(b, self.cfg.d_model, device=dev)
        seq = idx
        step_input = idx
        passes = 0
        processed = 0
        for step in range(max_new_tokens):
            if use_cache and step > 0 and decode != "eager":
                pos = torch.full((1,), cache.length, dtype=torch.int64, device=dev)
                logits, h = step_fn(step_input, pos, cache, routing)
                cache.length += 1
                out = None
                processed += b
            elif use_cache:
                out = self(
                    step_input,
                    cache=cache,
                    routing=routing,
                    prefix_embeds=prefix_embeds if step == 0 else None,
                    last_only=True,
                )
                processed += b * step_input.shape[1] + (s * b if step == 0 else 0)
            else:
                out = self(seq, routing=routing, prefix_embeds=prefix_embeds, last_only=True, with_aux=False)
                processed += b * (seq.shape[1] + s)
            passes += 1
            if out is not None:
                logits, h = out.logits[:, -1], out.hidden[:, -1]
            logits, h = logits.float(), h.float()
            pos = torch.full((b,), s + t0 + step, dtype=torch.int64, device=dev)
            nxt = sample_next(logits, temp, k_rows, seeds, pos)
            lp = logits.log_softmax(-1).gather(1, nxt[:, None]).squeeze(1)
            active = ~finished
            tokens[:, step] = torch.where(active, nxt, torch.full_like(nxt, pad_id))
            logprobs[:, step] = torch.where(active, lp, torch.zeros_like(lp))
            lengths += active.long()
            hid_sum += h * active[:, None]
            hid_last = torch.where(active[:, None], h, hid_last)
            if eos_id is not None:
                finished = finished | (active & (nxt == eos_id))
                if bool(finished.all()):
                    break
            step_input = nxt[:, None]
            seq = torch.cat([seq, step_input], dim=1)
        return GenerationResult(
            tokens=tokens,
            token_logprobs=logprobs,
            lengths=lengths,
            hidden_last=hid_last,
            hidden_mean=hid_sum / lengths.clamp_min(1)[:, None],
            forward_passes=passes,
            tokens_processed=processed,
        )


def sample_next(
    logits: Tensor, temperature: Tensor, top_k: Tensor | None, seed: Tensor, position: Tensor
) -> Tensor:
    """Per-row next token: greedy where temperature <= 0, else Gumbel-max over top-k tempered logits."""
    greedy = logits.argmax(dim=-1)
    sampling = temperature > 0
    if not bool(sampling.any()):
        return greedy
    scaled = logits / temperature.clamp_min(1e-6)[:, None]
    if top_k is not None:
        k = top_k.clamp(1, logits.shape[-1])
        sorted_vals = scaled.sort(dim=-1, descending=True).values
        kth = sorted_vals.gather(1, (k - 1)[:, None])
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    noise = counter_gumbel(seed, position, SAMPLING_STREAM, logits.shape[-1]).to(logits.device)
    sampled = (scaled + noise).argmax(dim=-1)
    return torch.where(sampling, sampled, greedy)
