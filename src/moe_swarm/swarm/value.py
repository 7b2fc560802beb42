"""Value head: P(answer correct | thought vector), trained from the swarm's own rollouts.

Plain PyTorch pieces a LightningModule (or a short loop, ``fit_value_head``) can train with:
``value_loss`` (binary cross-entropy on exact-match rewards) and ``group_relative_advantages``
(reward minus its problem's mean, over the problem's std: the GRPO-style signal for a policy update).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moe_swarm.swarm.scorer import labelled_loss


class ValueHead(nn.Module):
    """Small MLP on a normalised thought vector -> logit of P(the record's answer is correct).

    LayerNorm first, so the head does not depend on the absolute scale of the thought vectors
    (which drifts as the language model trains).
    """

    def __init__(self, d_model: int, hidden: int = 64) -> None:
        super().__init__()
        if d_model < 1 or hidden < 1:
            raise ValueError(f"ValueHead needs d_model >= 1 and hidden >= 1, got {d_model}, {hidden}")
        self.d_model = d_model
        self.hidden = hidden
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, hidden),
            nn.GELU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, thoughts: Tensor) -> Tensor:
        """``thoughts``: (..., d_model) -> logits (...)."""
        if thoughts.shape[-1] != self.d_model:
            raise ValueError(
                f"ValueHead(d_model={self.d_model}) got thought vectors of size {thoughts.shape[-1]}; "
                "build the head with the language model's d_model"
            )
        return self.net(thoughts.to(self.net[1].weight.dtype)).squeeze(-1)

    @torch.no_grad()
    def probability(self, thoughts: Tensor) -> Tensor:
        """P(correct) per thought, in [0, 1]."""
        return torch.sigmoid(self(thoughts))

    def config(self) -> dict:
        return {"d_model": self.d_model, "hidden": self.hidden}

    def logits(self, thoughts: Tensor) -> Tensor:
        """The :class:`~moe_swarm.swarm.scorer.Scorer` face: logits of P(correct) per thought."""
        return self(thoughts)

    def state(self) -> dict:
        """Plain-data state (config + weights), the ``value_head`` entry of a swarm state."""
        weights = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
        return {"config": self.config(), "state_dict": weights}

    @classmethod
    def from_state(cls, state: dict, map_location: str | torch.device = "cpu") -> ValueHead:
        head = cls(**state["config"])
        head.load_state_dict(state["state_dict"])
        return head.to(map_location).eval()


def value_loss(head: ValueHead, thoughts: Tensor, rewards: Tensor, pos_weight: float | None = None) -> Tensor:
    """Mean binary cross-entropy between the head's logits and rewards in [0, 1] (exact match = 1).

    ``pos_weight`` > 1 up-weights correct records (useful when the model is rarely right).
    """
    if thoughts.shape[0] != rewards.shape[0]:
        raise ValueError(f"{thoughts.shape[0]} thoughts but {rewards.shape[0]} rewards")
    return labelled_loss(head(thoughts), rewards, pos_weight)


def group_relative_advantages(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """``(r - mean_g) / (std_g + eps)`` with the mean and population std of each record's group.

    Groups are the records of one problem. A group whose rewards are all equal gets advantage 0
    everywhere (nothing to learn from it); a group of one record too.
    """
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(
            f"rewards and group_ids must be 1-D of equal length, got {tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )
    r = rewards.to(torch.float32)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    count = torch.zeros(n_groups, device=r.device).index_add_(0, inverse, torch.ones_like(r))
    mean = torch.zeros(n_groups, device=r.device).index_add_(0, inverse, r) / count
    centered = r - mean[inverse]
    var = torch.zeros(n_groups, device=r.device).index_add_(0, inverse, centered**2) / count
    return centered / (var.sqrt()[inverse] + eps)


def fit_value_head(
    head: ValueHead,
    thoughts: Tensor,
    rewards: Tensor,
    steps: int = 200,
    lr: float = 1e-3,
    batch_size: int | None = None,
    pos_weight: float | None = None,
    seed: int = 0,
) -> list[float]:
    """Train ``head`` with Adam for ``steps`` steps (full batch, or random minibatches); returns the losses.

    A plain loop for scripts and tests; the Lightning path uses ``value_loss`` directly.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    head.train()
    losses = []
    n = thoughts.shape[0]
    for _ in range(steps):
        if batch_size is None or batch_size >= n:
            x, y = thoughts, rewards
        else:
            idx = torch.randint(n, (batch_size,), generator=gen).to(thoughts.device)
            x, y = thoughts[idx], rewards[idx]
        loss = value_loss(head, x, y, pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    head.eval()
    return losses
