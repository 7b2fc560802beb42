"""Computed (not measured) training-state memory per rank for DDP, FSDP2 and expert parallelism.

Counts come from the model itself, built on the meta device (no memory used). Per parameter,
AdamW training in fp32 master weights holds 16 bytes: weight 4 + gradient 4 + two moments 8
(``bf16-mixed`` autocast keeps it so; FSDP2's ``MixedPrecisionPolicy`` adds bf16 copies only while a
block is unsharded). Activations, temporary buffers and the allocator's slack are not counted.

- DDP: every rank holds everything: 16 B x all parameters.
- FSDP2 over W ranks: 16 / W B per parameter at rest, plus, while a block computes, that block
  unsharded (bf16 weights 2 B + fp32 gradients 4 B per parameter of the block).
- EP (ep ranks per expert group) x FSDP2: at rest the same 16 / W (experts are split over ep and
  sharded over the W / ep ranks holding the same experts); while a block computes, only its
  non-expert part and E / ep experts are unsharded (none when ep = W: each rank's experts are whole).

    python -m moe_swarm.scale.parallel.memory            # the table in docs/scaling.md
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from moe_swarm.model.config import MoEConfig, RouterConfig, TransformerConfig
from moe_swarm.model.transformer import MoETransformer

__all__ = ["LayoutMemory", "layout_memory", "model_counts"]

STATE_BYTES = 16  # fp32 weight + fp32 grad + AdamW exp_avg + exp_avg_sq
UNSHARDED_BYTES = 6  # bf16 weight + fp32 grad of a block while it computes


@dataclass(frozen=True)
class Counts:
    total: int
    expert: int
    largest_block: int  # parameters of the biggest transformer block
    largest_block_expert: int


@dataclass(frozen=True)
class LayoutMemory:
    layout: str
    world: int
    ep: int
    resident_bytes: float  # per rank, at rest
    peak_bytes: float  # per rank, resident + the unsharded block

    @property
    def bytes_per_param(self) -> float:
        return self.resident_bytes


def model_counts(cfg: TransformerConfig) -> Counts:
    with torch.device("meta"):
        model = MoETransformer(cfg)
    total = sum(p.numel() for p in model.parameters())  # tied head counted once
    expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    blocks = [
        (
            sum(p.numel() for p in b.parameters()),
            sum(p.numel() for n, p in b.named_parameters() if ".experts." in n),
        )
        for b in model.blocks
    ]
    largest = max(blocks)
    return Counts(total, expert, largest[0], largest[1])


def layout_memory(counts: Counts, layout: str, world: int, ep: int = 1) -> LayoutMemory:
    if layout == "ddp":
        resident = STATE_BYTES * counts.total
        return LayoutMemory(layout, world, 1, resident, resident)
    resident = STATE_BYTES * counts.total / world
    non_expert = counts.largest_block - counts.largest_block_expert
    if layout != "ep":
        expert_unsharded = counts.largest_block_expert  # the whole pool is all-gathered
    elif ep == world:
        expert_unsharded = 0  # each rank's experts are whole already: nothing to gather
    else:
        expert_unsharded = counts.largest_block_expert / ep  # E / ep experts, over world / ep ranks
    unsharded = non_expert + expert_unsharded
    return LayoutMemory(layout, world, ep, resident, resident + UNSHARDED_BYTES * unsharded)


MODELS = {
    # conf/model/moe_large.yaml
    "moe_large": TransformerConfig(
        d_model=1024, n_layers=12, n_heads=16, max_seq_len=1024,
        moe=MoEConfig(num_experts=16, d_ff=1024, router=RouterConfig(top_k=2)),
    ),
    # Mixtral-8x7B's sizes (d 4096, 32 layers, 8 experts of 14336, top-2) in this project's architecture
    # (full multi-head attention, byte vocabulary): about 47B parameters, Mixtral has 46.7B.
    "mixtral_shaped": TransformerConfig(
        d_model=4096, n_layers=32, n_heads=32, max_seq_len=4096,
        moe=MoEConfig(num_experts=8, d_ff=14336, router=RouterConfig(top_k=2)),
    ),
}  # fmt: skip


def table(world: int = 8) -> str:
    """Markdown: GiB per rank for each model and layout at ``world`` ranks (EP = every rank)."""
    lines = [
        f"| model | parameters (experts) | layout ({world} ranks) | bytes/param/rank at rest | GiB/rank at rest "
        "| GiB/rank while a block computes |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, cfg in MODELS.items():
        c = model_counts(cfg)
        ep = min(world, cfg.moe.num_experts)
        for layout, e in (("ddp", 1), ("fsdp2", 1), ("ep", ep)):
            m = layout_memory(c, layout, world, e)
            label = {"ddp": "DDP", "fsdp2": "FSDP2", "ep": f"EP {e} x FSDP2"}[layout]
            lines.append(
                f"| {name} | {c.total / 1e9:.2f}B ({c.expert / 1e9:.2f}B) | {label} | "
                f"{m.resident_bytes / c.total:.2f} | {m.resident_bytes / 2**30:.2f} | {m.peak_bytes / 2**30:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="computed training-state memory per rank (see module doc)")
    parser.add_argument("--world", type=int, nargs="+", default=[8])
    for world in parser.parse_args(argv).world:
        print(table(world))
        print()


if __name__ == "__main__":
    main()
