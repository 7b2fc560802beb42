"""Token-choice gating: scores -> top-k experts -> combine weights, aux losses and routing stats.

The router always returns *raw logits* under the name ``logits`` (never probabilities), so a
caller cannot apply a second softmax by accident (the HF "double softmax" bug, transformers #45120).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_swarm.model.config import RouterConfig

_MASK32 = 0xFFFFFFFF


def counter_uniform(seed: Tensor, position: Tensor, stream: int, width: int) -> Tensor:
    """Uniform(0, 1) numbers, shape (N, width), that depend only on (seed, position, stream, column).

    A counter-based hash (murmur3 finaliser) instead of a stateful generator: a row's random
    numbers are the same whether it is decoded alone or inside a batch, which is what makes
    batched swarm agents reproducible one by one.
    """
    cols = torch.arange(width, device=seed.device, dtype=torch.int64)
    h = (seed.to(torch.int64)[:, None] & _MASK32) * 0x9E3779B1
    h = h + (position.to(torch.int64)[:, None] & _MASK32) * 0x85EBCA77
    h = h + (stream & _MASK32) * 0xC2B2AE3D + cols[None, :] * 0x27D4EB2F
    h = h & _MASK32
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    h = h ^ (h >> 16)
    return (h.to(torch.float64) + 0.5) / 2.0**32


def counter_gumbel(seed: Tensor, position: Tensor, stream: int, width: int) -> Tensor:
    """Standard Gumbel noise from :func:`counter_uniform` (float32, shape (N, width))."""
    u = counter_uniform(seed, position, stream, width)
    return (-torch.log(-torch.log(u))).to(torch.float32)


@dataclass
class RoutingControl:
    """Routing perturbation: what makes a swarm agent route differently from greedy.

    Given to the model per batch row (tensors of shape (B,), fixed for a whole trajectory);
    the model expands it per token with :meth:`for_tokens`, which fills ``position``, and the
    router reads it per token (shape (N,) over the flattened tokens).
    ``noise_scale``: scale of Gumbel noise added to the selection scores of the *non-top-1*
    experts (the top-1 choice is never perturbed). ``seed`` and ``position`` key the noise.
    ``top_k``: optional number of experts (1..E) overriding the router's k.
    """

    noise_scale: Tensor
    seed: Tensor
    top_k: Tensor | None = None
    position: Tensor | None = None

    def for_tokens(self, positions: Tensor) -> RoutingControl:
        """Expand per-row controls to per-token ones for a (B, T) block of absolute positions."""
        t = positions.shape[1]
        return RoutingControl(
            noise_scale=self.noise_scale.repeat_interleave(t),
            seed=self.seed.repeat_interleave(t),
            top_k=None if self.top_k is None else self.top_k.repeat_interleave(t),
            position=positions.reshape(-1),
        )


@dataclass
class RouterOutput:
    """Everything a router decides for N tokens (k = number of chosen experts per token)."""

    logits: Tensor  # (N, E) raw router logits, fp32
    indices: Tensor  # (N, k) chosen experts, distinct per token
    weights: Tensor  # (N, k) combine weights (0 where the assignment is not kept)
    # (N, k) bool: assignment is processed (not padding, not dropped by capacity); None = all are.
    keep: Tensor | None
    # The rest is None when the router ran with compute_aux=False.
    load_balance_loss: Tensor | None = None  # scalar: E * sum_i f_i * P_i (multiply by alpha yourself)
    z_loss: Tensor | None = None  # scalar: mean_t logsumexp(logits_t)^2
    counts: Tensor | None = None  # (E,) kept assignments per expert (float32)
    dropped_frac: Tensor | None = None  # scalar: dropped assignments / routed assignments
    entropy: Tensor | None = None  # scalar: mean router entropy (nats) over valid tokens
    # The ingredients of the balance loss, for balancing over a larger batch than this one
    # (:func:`balance_loss`): hard routed assignments per expert before capacity drops (E,), no
    # gradient, and the mean routing probabilities P (E,), with gradient.
    routed_counts: Tensor | None = None
    mean_probs: Tensor | None = None

    @property
    def load_max_over_mean(self) -> Tensor:
        return self.counts.max() / self.counts.mean().clamp_min(1e-9)


class Router(nn.Module):
    """Gating network with softmax top-k (Mixtral/Switch) or sigmoid + bias (DeepSeek-V3) routing.

    Load-balancing loss convention: ``f_i`` is the fraction of the N*k routed (token, expert)
    assignments that chose expert i (hard counts, before capacity dropping, no gradient) and
    ``P_i`` is the mean routing probability of expert i over valid tokens, so ``sum f = sum P = 1``
    for any k. The returned value ``E * sum_i f_i * P_i`` equals 1.0 for perfectly uniform
    routing (its minimum when f and P are both uniform); multiply by ``alpha`` (1e-2 in Switch).
    This is k times smaller than HF Mixtral's variant, which normalises f by N instead of N*k.
    In ``sigmoid_bias`` mode, P_i uses the sigmoid scores normalised to sum to 1 per token.
    """

    def __init__(self, d_model: int, num_experts: int, cfg: RouterConfig, layer_id: int = 0) -> None:
        super().__init__()
        if not 1 <= cfg.top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {cfg.top_k}")
        self.cfg = cfg
        self.num_experts = num_experts
        self.layer_id = layer_id
        self.weight = nn.Parameter(torch.empty(num_experts, d_model))
        nn.init.normal_(self.weight, std=0.02)
        # Aux-loss-free balancing bias (sigmoid_bias mode); a buffer, so it is checkpointed and
        # broadcast by DDP but never touched by the optimizer.
        self.register_buffer("bias", torch.zeros(num_experts), persistent=True)

    def extra_repr(self) -> str:
        return (
            f"mode={self.cfg.mode}, num_experts={self.num_experts}, top_k={self.cfg.top_k}, "
            f"capacity_factor={self.cfg.capacity_factor}"
        )

    def forward(
        self,
        x: Tensor,
        pad_mask: Tensor | None = None,
        control: RoutingControl | None = None,
        compute_aux: bool = True,
    ) -> RouterOutput:
        """Route N tokens. ``x``: (N, d_model). ``pad_mask``: (N,) bool, True for real tokens.

        ``compute_aux=False`` skips losses and stats (decoding does not need them).
        """
        n, e = x.shape[0], self.num_experts
        if self.training and self.cfg.jitter_eps > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.cfg.jitter_eps, 1.0 + self.cfg.jitter_eps)
        # Router math in fp32, also under autocast (which would run this linear in bf16).
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())
        if self.training and self.cfg.noise_std > 0:
            select_logits = logits + torch.randn_like(logits) * self.cfg.noise_std
        else:
            select_logits = logits

        if self.cfg.mode == "softmax_topk":
            probs = select_logits.softmax(dim=-1)
            select_scores = probs
            gate_scores = probs
            balance_probs = logits.softmax(dim=-1)
        else:
            scores = torch.sigmoid(select_logits)
            select_scores = scores + self.bias.float()
            gate_scores = scores
            balance_probs = scores / scores.sum(dim=-1, keepdim=True).clamp_min(1e-9)

        override = control is not None and control.top_k is not None
        k = self.cfg.top_k
        if override:
            # Host sync, but only on the swarm path with an explicit override.
            k = int(control.top_k.max().clamp(1, e))
        indices = self._select(select_scores, k, control)
        weights = gate_scores.gather(1, indices)
        if override:
            slot_ok = torch.arange(k, device=x.device)[None, :] < control.top_k[:, None].clamp(1, e)
            weights = weights * slot_ok
        if self.cfg.renormalize or self.cfg.mode == "sigmoid_bias":
            weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-9)
        weights = weights * self.cfg.route_scale

        if pad_mask is None and self.cfg.capacity_factor is None and not override:
            # Every assignment is processed: keep=None lets dispatch skip all masking work.
            keep = None
            if not compute_aux:
                return RouterOutput(logits, indices, weights, keep)
            valid = torch.ones(n, dtype=torch.bool, device=x.device)
            routed = kept = torch.ones_like(indices, dtype=torch.bool)
        else:
            valid = torch.ones(n, dtype=torch.bool, device=x.device) if pad_mask is None else pad_mask.bool()
            if not override:  # every slot counts
                slot_ok = torch.ones_like(indices, dtype=torch.bool)
            routed = slot_ok & valid[:, None]
            kept = routed
            if self.cfg.capacity_factor is not None:
                kept = routed & self._within_capacity(indices, routed, valid)
            weights = weights * kept
            keep = kept
            if not compute_aux:
                return RouterOutput(logits, indices, weights, keep)

        validf = valid.float()
        n_valid = validf.sum().clamp_min(1.0)
        one_hot_routed = torch.zeros(n, e, device=x.device).scatter_add_(1, indices, routed.float())
        routed_counts = one_hot_routed.sum(0).detach()
        p = (balance_probs * validf[:, None]).sum(0) / n_valid
        load_balance_loss = balance_loss(routed_counts, p)
        z_loss = (torch.logsumexp(logits, dim=-1).pow(2) * validf).sum() / n_valid
        counts = torch.zeros(e, device=x.device).scatter_add_(
            0, indices.reshape(-1), kept.reshape(-1).float()
        )
        n_routed = routed.float().sum().clamp_min(1.0)
        dropped_frac = (routed & ~kept).float().sum() / n_routed
        ent = -(balance_probs * balance_probs.clamp_min(1e-12).log()).sum(-1)
        entropy = (ent * validf).sum() / n_valid
        return RouterOutput(
            logits=logits,
            indices=indices,
            weights=weights,
            keep=keep,
            load_balance_loss=load_balance_loss,
            z_loss=z_loss,
            counts=counts.detach(),
            dropped_frac=dropped_frac.detach(),
            entropy=entropy.detach(),
            routed_counts=routed_counts,
            mean_probs=p,
        )

    def _select(self, scores: Tensor, k: int, control: RoutingControl | None) -> Tensor:
        """Top-k indices; with a control, the top-1 stays put and the tail is chosen on noisy scores."""
        if control is None or k == 1 and control.top_k is None:
            return scores.topk(k, dim=-1).indices
        if control.position is None:
            raise ValueError("a per-token RoutingControl needs positions: expand it with for_tokens()")
        top1 = scores.argmax(dim=-1, keepdim=True)
        noise = counter_gumbel(control.seed, control.position, self.layer_id, self.num_experts)
        # Perturb log-scores so the noise scale means the same for softmax and sigmoid modes.
        noisy = scores.clamp_min(1e-9).log() + control.noise_scale[:, None].float() * noise
        noisy = noisy.scatter(1, top1, float("inf"))
        return noisy.topk(k, dim=-1).indices

    def _within_capacity(self, indices: Tensor, routed: Tensor, valid: Tensor) -> Tensor:
        """Keep mask for per-expert capacity ceil(cf * T * k / E); earlier slots, then earlier tokens win."""
        n, k = indices.shape
        e = self.num_experts
        capacity = torch.ceil(self.cfg.capacity_factor * valid.float().sum() * self.cfg.top_k / e)
        # Slot-major priority: every token's first choice is served before any second choice.
        flat_idx = indices.t().reshape(-1)
        flat_routed = routed.t().reshape(-1)
        one_hot = F.one_hot(flat_idx, e) * flat_routed[:, None]
        position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1  # 0-based slot within the expert
        within = (position < capacity) & flat_routed
        return within.reshape(k, n).t()

    @torch.no_grad()
    def update_bias(self, counts: Tensor, gamma: float = 1e-3) -> None:
        """DeepSeek-V3 aux-loss-free update: ``b_i += gamma * sign(mean_load - load_i)``.

        ``counts`` are per-expert token counts, already summed across ranks by the caller.
        """
        counts = counts.to(self.bias.device, torch.float32)
        self.bias += gamma * torch.sign(counts.mean() - counts)


def balance_loss(routed_counts: Tensor, mean_probs: Tensor) -> Tensor:
    """Switch balance loss ``E * sum_i f_i * P_i`` with ``f = counts / counts.sum()`` over the last dim.

    ``routed_counts`` may cover more tokens than ``mean_probs`` (the global batch: micro-batches of
    gradient accumulation and data-parallel ranks, Qwen's global-batch balancing) while P keeps the
    local gradient. Shapes (E,) or (L, E); returns one value per row.
    """
    counts = routed_counts.detach().float()
    f = counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
    return mean_probs.shape[-1] * (f * mean_probs).sum(-1)


def load_cv(counts: Tensor) -> Tensor:
    """Coefficient of variation (std / mean, population std) of per-expert loads; 0 = uniform."""
    counts = counts.float()
    return counts.std(-1, correction=0) / counts.mean(-1).clamp_min(1e-9)


def max_over_mean(counts: Tensor) -> Tensor:
    """Most-loaded expert over the mean load (1 = uniform, E = everything on one expert)."""
    counts = counts.float()
    return counts.amax(-1) / counts.mean(-1).clamp_min(1e-9)


def dead_experts(window_counts: Tensor) -> Tensor:
    """Experts that received no token over a window: ``window_counts`` (..., E) summed over the window."""
    return (window_counts <= 0).sum(-1)


def expected_capacity(capacity_factor: float, num_tokens: int, top_k: int, num_experts: int) -> int:
    """Per-expert capacity in assignments: ``ceil(cf * T * k / E)`` (for docs and tests)."""
    return math.ceil(capacity_factor * num_tokens * top_k / num_experts)
