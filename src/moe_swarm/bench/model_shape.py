"""The shapes benchmarks build: one place for their fields, names and the configs they stand for, so the
suites measure the same kind of model from the same numbers. :class:`LayerShape` is one MoE layer
(moe_layer, moe_sizes); :class:`ModelShape` a whole MoE transformer (train_step, generate, parallel)."""

from __future__ import annotations

from dataclasses import dataclass

from moe_swarm.model import MoEConfig, MoELayer, RouterConfig, TransformerConfig


@dataclass(frozen=True)
class LayerShape:
    """One MoE layer: ``num_experts`` experts of width ``d_ff``, ``top_k`` of them per token."""

    num_experts: int
    top_k: int
    d_model: int
    d_ff: int

    def make_layer(self) -> MoELayer:
        """The layer on the current default device (wrap in ``with torch.device(...)`` for large ones)."""
        cfg = MoEConfig(num_experts=self.num_experts, d_ff=self.d_ff, router=RouterConfig(top_k=self.top_k))
        return MoELayer(self.d_model, cfg)

    def config(self) -> dict[str, int]:
        """The shape's part of a row's ``config``."""
        return {
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "d_model": self.d_model,
            "d_ff": self.d_ff,
        }


@dataclass(frozen=True)
class ModelShape:
    """Base of a suite's setup dataclass: the model's size; the subclass adds batch, lengths and steps."""

    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    num_experts: int
    top_k: int

    @property
    def shape_name(self) -> str:
        """``d<model>L<layers>E<experts>k<top_k>``: the model part of a row's case."""
        return f"d{self.d_model}L{self.n_layers}E{self.num_experts}k{self.top_k}"

    def model_config(self, max_seq_len: int) -> TransformerConfig:
        return TransformerConfig(
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            max_seq_len=max_seq_len,
            moe=MoEConfig(
                num_experts=self.num_experts, d_ff=self.d_ff, router=RouterConfig(top_k=self.top_k)
            ),
        )
