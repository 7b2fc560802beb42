"""Tensor names and layouts between a Hugging Face MoE checkpoint and ``MoETransformer``'s state dict.

One plan, :func:`weight_plan`, maps every HF tensor name to where it lives in our state dict; import
reads through it and export writes through its inverse, so import(export(x)) is bit-identical.
Layouts: our q/k/v are one fused ``qkv`` projection (rows q, k, v); experts are stacked
``w1``/``w3`` (E, d_model, d_ff) and ``w2`` (E, d_ff, d_model), i.e. transposed HF ``nn.Linear``
weights. HF folders hold experts per expert (``experts.{e}.w1.weight``, published checkpoints) or
fused (``experts.gate_up_proj`` (E, 2 d_ff, d_model), ``experts.down_proj`` (E, d_model, d_ff)).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from moe_swarm.hf.families import EXPERT_NAMES, MOE_BLOCK
from moe_swarm.model.config import TransformerConfig


@dataclass(frozen=True)
class Slot:
    """Where one HF tensor goes: ``ours`` (a state-dict key) and how.

    ``kind``: ``copy`` (same tensor), ``rows`` (rows ``start:end`` of ours: q/k/v in ``qkv``),
    ``expert`` (``ours[index] = hf.T``), ``fused_gate_up`` (gate half to ``ours`` = w1, up half to
    ``w3``, each transposed per expert), ``fused_down`` (``ours = hf.transpose(1, 2)``).
    """

    ours: str
    kind: str = "copy"
    start: int = 0
    end: int = 0
    index: int = 0


def weight_plan(cfg: TransformerConfig, family: str, fused_experts: bool = False) -> dict[str, Slot]:
    """Every HF tensor name of ``family`` for ``cfg`` -> its :class:`Slot` in our state dict."""
    plan = {"model.embed_tokens.weight": Slot("embed.weight"), "model.norm.weight": Slot("norm.weight")}
    if not cfg.tie_weights:
        plan["lm_head.weight"] = Slot("lm_head.weight")
    hd = cfg.resolved_head_dim
    q, kv = cfg.n_heads * hd, cfg.kv_heads * hd
    gate, up, down = EXPERT_NAMES[family]
    for i in range(cfg.n_layers):
        hf, ours = f"model.layers.{i}.", f"blocks.{i}."
        plan[hf + "input_layernorm.weight"] = Slot(ours + "attn_norm.weight")
        plan[hf + "post_attention_layernorm.weight"] = Slot(ours + "ffn_norm.weight")
        params = ("weight", "bias") if cfg.qkv_bias else ("weight",)
        for name, (start, end) in (("q", (0, q)), ("k", (q, q + kv)), ("v", (q + kv, q + 2 * kv))):
            for p in params:
                plan[f"{hf}self_attn.{name}_proj.{p}"] = Slot(f"{ours}attn.qkv.{p}", "rows", start, end)
        plan[hf + "self_attn.o_proj.weight"] = Slot(ours + "attn.proj.weight")
        if cfg.qk_norm != "none":
            for name in ("q_norm", "k_norm"):
                plan[f"{hf}self_attn.{name}.weight"] = Slot(f"{ours}attn.{name}.weight")
        if not cfg.is_moe_layer(i):
            for name, w in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
                plan[f"{hf}mlp.{name}.weight"] = Slot(f"{ours}ffn.{w}.weight")
            continue
        # transformers 5 keeps fused experts under "mlp." for every family (Mixtral too).
        block = f"{hf}mlp." if fused_experts else f"{hf}{MOE_BLOCK[family]}."
        plan[block + "gate.weight"] = Slot(ours + "ffn.router.weight")
        if fused_experts:
            plan[block + "experts.gate_up_proj"] = Slot(ours + "ffn.experts.w1", "fused_gate_up")
            plan[block + "experts.down_proj"] = Slot(ours + "ffn.experts.w2", "fused_down")
        else:
            for e in range(cfg.moe.num_experts):
                for name, w in ((gate, "w1"), (up, "w3"), (down, "w2")):
                    plan[f"{block}experts.{e}.{name}.weight"] = Slot(
                        f"{ours}ffn.experts.{w}", "expert", index=e
                    )
        if cfg.moe.shared_expert_d_ff > 0:
            for name, w in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
                plan[f"{block}shared_expert.{name}.weight"] = Slot(f"{ours}ffn.shared_expert.{w}.weight")
            if cfg.moe.shared_expert_gate:
                plan[block + "shared_expert_gate.weight"] = Slot(ours + "ffn.shared_expert_gate.weight")
    return plan


def expected_hf_shape(slot: Slot, ours: Tensor) -> tuple[int, ...]:
    """The shape the HF tensor of ``slot`` must have, given our destination tensor."""
    if slot.kind == "rows":
        return (slot.end - slot.start, *ours.shape[1:])
    if slot.kind == "expert":
        return tuple(reversed(ours.shape[1:]))
    if slot.kind == "fused_gate_up":  # ours = w1 (E, d, ff)
        e, d, ff = ours.shape
        return (e, 2 * ff, d)
    if slot.kind == "fused_down":  # ours = w2 (E, ff, d)
        e, ff, d = ours.shape
        return (e, d, ff)
    return tuple(ours.shape)


def place(slot: Slot, hf: Tensor, state: dict[str, Tensor]) -> None:
    """Copy one HF tensor into the preallocated destination(s) of ``state`` (casting to their dtype)."""
    dest = state[slot.ours]
    if slot.kind == "rows":
        dest[slot.start : slot.end].copy_(hf)
    elif slot.kind == "expert":
        dest[slot.index].copy_(hf.t())
    elif slot.kind == "fused_gate_up":
        ff = dest.shape[2]
        dest.copy_(hf[:, :ff].transpose(1, 2))
        state[slot.ours.replace(".w1", ".w3")].copy_(hf[:, ff:].transpose(1, 2))
    elif slot.kind == "fused_down":
        dest.copy_(hf.transpose(1, 2))
    else:
        dest.copy_(hf)


def extract(slot: Slot, state: dict[str, Tensor]) -> Tensor:
    """The HF tensor of ``slot`` read out of our state dict (per-expert layout only), contiguous."""
    src = state[slot.ours]
    if slot.kind == "rows":
        return src[slot.start : slot.end].contiguous()
    if slot.kind == "expert":
        return src[slot.index].t().contiguous()
    if slot.kind != "copy":
        raise ValueError(f"export writes the per-expert layout, not {slot.kind}")
    return src.contiguous()


def shard_groups(sizes: dict[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Names (in order) grouped into shards of at most ``max_shard_bytes`` bytes; a larger single
    tensor gets a shard of its own."""
    groups: list[list[str]] = [[]]
    total = 0
    for name, n in sizes.items():
        if groups[-1] and total + n > max_shard_bytes:
            groups.append([])
            total = 0
        groups[-1].append(name)
        total += n
    return groups


def is_fused_layout(names: list[str]) -> bool:
    return any(n.endswith("experts.gate_up_proj") for n in names)


__all__ = ["Slot", "expected_hf_shape", "extract", "is_fused_layout", "place", "shard_groups", "weight_plan"]
