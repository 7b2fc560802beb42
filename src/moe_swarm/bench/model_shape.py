"""The MoE transformer shape a benchmark setup builds: one place for its fields, its case name and the
``TransformerConfig`` it stands for, so the train-step, generate and parallel suites measure the same
kind of model from the same numbers."""

from __future__ import annotations

from dataclasses import dataclass

from moe_swarm.model import MoEConfig, RouterConfig, TransformerConfig


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
