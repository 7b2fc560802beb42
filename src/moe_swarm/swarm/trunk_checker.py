"""A step checker that shares the generator's trunk: a head on hidden states the swarm already computed.

The full-copy checker (``moe_swarm.swarm.checker.StepChecker``) re-reads every proposal with its own
fine-tuned copy of the model, which makes the step swarm cost 1.5-1.6x the FLOPs of independent
sampling at equal forward passes. This checker reads what decoding a proposal already produced: the
generator's final hidden state at each of the step's tokens (``capture="read"``: the state after
feeding the token) and the log-prob the generator gave each token. Its features are the hidden state
after the step's last token and the mean over the step's tokens (each at unit RMS), plus the mean and
the minimum token log-prob; an MLP maps them to the logit of P(step correct). Checking a proposal
costs the head only, and no forward pass.

Training and the compute-matched controls score written text teacher-forced through the same frozen
generator (``bind``), which gives the same hidden states as decoding (tested to a tolerance), so the
labels of ``moe_swarm.training.step_labels`` train it unchanged. The generator is never part of this
module's state: it is bound at use (``StepSwarm`` binds its own model).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from moe_swarm.model import MoETransformer
from moe_swarm.swarm.checker import score_completion_steps, step_features

TRUNK_KIND = "trunk"


def trunk_features(hidden_last: Tensor, hidden_mean: Tensor, lp_mean: Tensor, lp_min: Tensor) -> Tensor:
    """``(R, 2d + 2)``: unit-RMS last and mean hidden states of the step, its mean and minimum log-prob."""
    return torch.cat([step_features(hidden_last, hidden_mean), lp_mean[:, None], lp_min[:, None]], dim=-1)


def span_trunk_features(hidden: Tensor, logits: Tensor, idx: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
    """Teacher-forced features of rows whose step occupies ``starts[r] .. ends[r]`` (inclusive) of ``idx``:
    hidden states at the step's positions, and the log-prob of each step token from the logits one
    position earlier (so the first token counts too, as in decoding)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    pos = torch.arange(hidden.shape[1], device=hidden.device)[None]
    sel = ((pos >= starts[:, None]) & (pos <= ends[:, None])).float()
    mean = (hidden * sel[..., None]).sum(1) / sel.sum(1, keepdim=True).clamp_min(1)
    lp = logits[:, :-1].float().log_softmax(-1).gather(2, idx[:, 1:, None]).squeeze(2)  # lp[t] of token t+1
    inner = sel[:, 1:]  # token t+1 is in the step
    lp_mean = (lp * inner).sum(1) / inner.sum(1).clamp_min(1)
    lp_min = torch.where(inner > 0, lp, torch.full_like(lp, float("inf"))).min(1).values
    lp_min = torch.where(torch.isfinite(lp_min), lp_min, torch.zeros_like(lp_min))
    return trunk_features(hidden[rows, ends].float(), mean.float(), lp_mean, lp_min)


class TrunkStepChecker(nn.Module):
    """MLP head on the generator's own hidden states -> logit of P(step correct); no model copy."""

    kind = TRUNK_KIND
    shares_trunk = True

    def __init__(self, d_model: int, hidden: int = 128) -> None:
        super().__init__()
        if hidden < 1 or d_model < 1:
            raise ValueError(f"TrunkStepChecker needs d_model, hidden >= 1, got {d_model}, {hidden}")
        self.d_model, self.hidden = d_model, hidden
        width = 2 * d_model + 2
        self.head = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )
        self._trunk: list[MoETransformer] = []  # a list, so the generator is not a submodule (not saved)

    def bind(self, model: MoETransformer) -> TrunkStepChecker:
        """Use ``model`` (the generator, frozen) for teacher-forced scoring."""
        if model.cfg.d_model != self.d_model:
            raise ValueError(f"checker d_model={self.d_model} does not match the model's {model.cfg.d_model}")
        self._trunk[:] = [model]
        return self

    @property
    def model(self) -> MoETransformer:
        if not self._trunk:
            raise RuntimeError("this TrunkStepChecker is not bound to a generator; call .bind(model)")
        return self._trunk[0]

    def logits_of(self, features: Tensor) -> Tensor:
        return self.head(features.float()).squeeze(-1)

    def logits(self, batch: dict[str, Tensor]) -> Tensor:
        """The ``Scorer`` face: teacher-forced logits of an encoded batch (``idx``, ``mask``, ``starts``, ``ends``)."""
        return self.score_sequences(batch["idx"], batch["mask"], batch["starts"], batch["ends"])

    def score_sequences(self, idx: Tensor, mask: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
        with torch.no_grad():  # the trunk is the frozen generator: only the head learns
            out = self.model(idx, pad_mask=mask, with_aux=False, last_only=True)
            logits = self.model.lm_head(out.hidden)
            feats = span_trunk_features(out.hidden.float(), logits, idx, starts, ends)
        return self.logits_of(feats)

    @torch.no_grad()
    def score_decoded(self, decoded, lengths: Tensor) -> Tensor:
        """P(correct) of each decoded proposal, from the decoding engine's ``capture="read"`` outputs."""
        n = lengths.clamp_min(1)
        written = torch.arange(decoded.token_logprobs.shape[1], device=n.device)[None] < n[:, None]
        lp = decoded.token_logprobs.float()
        lp_min = torch.where(written, lp, torch.full_like(lp, float("inf"))).min(1).values
        feats = trunk_features(
            decoded.hidden_last,
            decoded.hidden_sum / n[:, None].float(),
            decoded.logprob_sum.float() / n,
            lp_min,
        )
        return torch.sigmoid(self.logits_of(feats)).float()

    def head_flops(self, tokens: int = 1) -> float:
        """FLOPs of one check: the head's matrix products (the features come free with decoding)."""
        return 2.0 * sum(p.numel() for p in self.head.parameters())

    def config(self) -> dict:
        return {"kind": TRUNK_KIND, "d_model": self.d_model, "hidden": self.hidden}

    def state(self) -> dict:
        """Plain-data state (kind, config, head weights); the generator is saved with the model."""
        return {
            **self.config(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict, map_location: str | torch.device = "cpu") -> TrunkStepChecker:
        checker = cls(int(state["d_model"]), int(state["hidden"]))
        checker.load_state_dict(state["state_dict"])
        return checker.to(map_location).eval()


def score_completions_trunk(
    checker: TrunkStepChecker, tokenizer, prompt: str, completions: Sequence[str]
) -> list[list[float]]:
    """P(correct) of every step of each written completion, teacher-forced through the bound generator
    (the hidden states independent sampling computed; recomputed here because that solver drops them)."""
    return score_completion_steps(
        checker.model, span_trunk_features, checker.logits_of, tokenizer, prompt, completions
    )
