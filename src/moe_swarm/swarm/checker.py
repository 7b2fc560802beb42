"""The learned step checker (a process reward model): P(a proposed step is correct | its prefix).

A verifier model: a copy of the backbone, fine-tuned, with a small MLP head on its final hidden
states over the step (``step_features``: the hidden state after the step's last token and the mean
over the step's tokens, each at unit RMS) and on the mean and minimum log-prob its own LM gives the
step's tokens. It reads ``[BOS] + prompt + committed steps + step``. A
head on the *frozen* generator's hidden states was tried first and ranked the proposals of one step
barely above chance (docs/swarm.md), so the checker gets its own weights. Labels come from the task's
exact step oracle (``Task.step_is_correct``) on *train*-split rollouts; no hand-written invariant is
ever the scorer. ``within_group_auc`` (in ``moe_swarm.swarm.statistics``) is the metric that matters
for a vote: how well the checker ranks the proposals made at one position of one problem.

In the step swarm the checker keeps its own KV cache of each trajectory, so checking a proposal is
one chunk forward over the step's tokens (``score_chunk``); teacher-forced scoring of whole written
completions (``score_sequences``) serves training and the compute-matched controls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from moe_swarm.data.tasks import STEP_SEPARATOR
from moe_swarm.model import MoETransformer, TransformerConfig
from moe_swarm.model.decoding import extend
from moe_swarm.model.kv_cache import KVCache
from moe_swarm.swarm.scorer import labelled_loss
from moe_swarm.swarm.statistics import ranking_quality as ranking_quality  # re-exported: it lived here
from moe_swarm.swarm.statistics import within_group_auc as within_group_auc


def step_features(end_hidden: Tensor, mean_hidden: Tensor) -> Tensor:
    """``(R, d)`` hidden after the step's last token and ``(R, d)`` mean over its tokens -> ``(R, 2d)``."""

    def unit(x: Tensor) -> Tensor:
        x = x.float()
        return x / x.pow(2).mean(-1, keepdim=True).add(1e-12).sqrt()

    return torch.cat([unit(end_hidden), unit(mean_hidden)], dim=-1)


def _span_features(hidden: Tensor, logits: Tensor, idx: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
    """Features of rows whose step occupies positions ``starts[r] .. ends[r]`` (inclusive) of ``idx``:
    ``step_features`` plus the mean and the minimum log-prob, under the checker's own LM, of the step's
    tokens after its first (those predicted from inside the span)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    pos = torch.arange(hidden.shape[1], device=hidden.device)[None]
    sel = ((pos >= starts[:, None]) & (pos <= ends[:, None])).float()
    mean = (hidden * sel[..., None]).sum(1) / sel.sum(1, keepdim=True).clamp_min(1)
    lp = logits[:, :-1].float().log_softmax(-1).gather(2, idx[:, 1:, None]).squeeze(2)  # lp[t] of token t+1
    inner = ((pos[:, 1:] > starts[:, None]) & (pos[:, 1:] <= ends[:, None])).float()
    lp_mean = (lp * inner).sum(1) / inner.sum(1).clamp_min(1)
    masked = torch.where(inner > 0, lp, torch.zeros_like(lp))
    lp_min = masked.min(1).values if masked.shape[1] else torch.zeros_like(lp_mean)
    return torch.cat([step_features(hidden[rows, ends], mean), lp_mean[:, None], lp_min[:, None]], dim=-1)


class StepChecker(nn.Module):
    """Verifier LM (initialised from the backbone) + MLP head -> logit of P(step correct)."""

    def __init__(self, model: MoETransformer, hidden: int = 128) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"StepChecker needs hidden >= 1, got {hidden}")
        d = model.cfg.d_model
        self.model, self.hidden = model, hidden
        self.head = nn.Sequential(
            nn.LayerNorm(2 * d + 2), nn.Linear(2 * d + 2, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

    @property
    def d_model(self) -> int:
        return self.model.cfg.d_model

    def logits_of(self, features: Tensor) -> Tensor:
        return self.head(features.float()).squeeze(-1)

    def logits(self, batch: dict[str, Tensor]) -> Tensor:
        """The :class:`~moe_swarm.swarm.scorer.Scorer` face: ``score_sequences`` of an encoded batch."""
        return self.score_sequences(batch["idx"], batch["mask"], batch["starts"], batch["ends"])

    def config(self) -> dict:
        return {"model": self.model.cfg.to_dict(), "hidden": self.hidden}

    def score_sequences(self, idx: Tensor, mask: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
        """Teacher-forced logits for padded rows ``idx`` (B, T) whose step spans ``starts..ends``."""
        hidden = self.model(idx, pad_mask=mask, with_aux=False, last_only=True).hidden
        return self.logits_of(_span_features(hidden.float(), self.model.lm_head(hidden), idx, starts, ends))

    @torch.no_grad()
    def score_chunk(self, cache: KVCache, tokens: Tensor, lengths: Tensor) -> Tensor:
        """P(correct) of each row's step ``tokens[r, :lengths[r]]`` appended to the cached prefix (one forward)."""
        hidden = extend(self.model, cache, tokens).hidden
        zero = torch.zeros_like(lengths)
        feats = _span_features(hidden.float(), self.model.lm_head(hidden), tokens, zero, lengths - 1)
        return torch.sigmoid(self.logits_of(feats)).float()

    def head_flops(self, tokens: int = 1) -> float:
        """The head, plus the LM output layer the log-prob features need over ``tokens`` positions."""
        lm_head = self.model.cfg.vocab_size * self.model.cfg.d_model
        return 2.0 * sum(p.numel() for p in self.head.parameters()) + 2.0 * lm_head * tokens

    def state(self) -> dict:
        """Plain-data state (config + weights) for checkpoints and ``torch.load(weights_only=True)``."""
        return {
            "model": self.model.cfg.to_dict(),
            "hidden": self.hidden,
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict, map_location: str | torch.device = "cpu") -> StepChecker:
        checker = cls(MoETransformer(TransformerConfig.from_dict(state["model"])), int(state["hidden"]))
        checker.load_state_dict(state["state_dict"])
        return checker.to(map_location).eval()


def encode_steps(
    tokenizer, contexts: Sequence[str], steps: Sequence[str], answer_lines: Sequence[bool], max_len: int
):
    """Rows ``[BOS] + context + step + separator`` (EOS after an answer line) padded with PAD, their mask,
    and where each step starts and ends (inclusive, separator included)."""
    sep = tokenizer.encode(STEP_SEPARATOR)[0]
    seqs, starts, ends = [], [], []
    for c, s, ans in zip(contexts, steps, answer_lines, strict=True):
        ctx = tokenizer.encode(c, bos=True)
        row = (ctx + tokenizer.encode(s) + [tokenizer.EOS if ans else sep])[:max_len]
        seqs.append(row)
        starts.append(min(len(ctx), len(row) - 1))
        ends.append(len(row) - 1)
    idx, mask = pad_rows(seqs, tokenizer.PAD)
    return idx, mask, torch.tensor(starts), torch.tensor(ends)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad token rows into one (B, T) batch and its validity mask."""
    width = max(len(r) for r in rows)
    idx = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        idx[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return idx, mask


def checker_loss(logits: Tensor, labels: Tensor, pos_weight: float | None = None) -> Tensor:
    """Binary cross-entropy of checker logits against oracle labels in {0, 1} (the scorers' one loss)."""
    return labelled_loss(logits, labels, pos_weight)


@torch.no_grad()
def score_completion_steps(
    model: MoETransformer,
    span_features: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor],
    logits_of: Callable[[Tensor], Tensor],
    tokenizer,
    prompt: str,
    completions: Sequence[str],
) -> list[list[float]]:
    """P(correct) of every step of each written completion (e.g. an independent sample), teacher-forced:
    each completion is read once as ``[BOS] + prompt + completion + [EOS]`` in one batched forward of
    ``model``; ``span_features(hidden, logits, idx, starts, ends)`` and ``logits_of`` are the scorer's."""
    if not completions:
        return []
    dev = next(model.parameters()).device
    sep = tokenizer.encode(STEP_SEPARATOR)[0]
    prompt_ids = tokenizer.encode(prompt, bos=True)
    seqs = [
        (prompt_ids + tokenizer.encode(c.strip("\n"), eos=True))[: model.cfg.max_seq_len] for c in completions
    ]
    idx, mask = pad_rows(seqs, tokenizer.PAD)
    idx, mask = idx.to(dev), mask.to(dev)
    hidden = model(idx, pad_mask=mask, with_aux=False, last_only=True).hidden
    logits = model.lm_head(hidden)
    rows, starts, ends = [], [], []
    for i, s in enumerate(seqs):
        start = len(prompt_ids)
        for pos in range(len(prompt_ids), len(s)):
            if s[pos] in (sep, tokenizer.EOS):
                rows.append(i)
                starts.append(start)
                ends.append(pos)
                start = pos + 1
    out: list[list[float]] = [[] for _ in seqs]
    if rows:
        r = torch.tensor(rows, device=dev)
        feats = span_features(
            hidden[r].float(),
            logits[r],
            idx[r],
            torch.tensor(starts, device=dev),
            torch.tensor(ends, device=dev),
        )
        for i, p in zip(rows, torch.sigmoid(logits_of(feats)).cpu().tolist(), strict=True):
            out[i].append(p)
    return out


def score_completions(
    checker: StepChecker, tokenizer, prompt: str, completions: Sequence[str]
) -> list[list[float]]:
    """P(correct) of every step of each written completion, read by the checker's own model copy."""
    return score_completion_steps(
        checker.model, _span_features, checker.logits_of, tokenizer, prompt, completions
    )
