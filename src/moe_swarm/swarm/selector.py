"""A learned step selector: which of a step's candidate strings to commit, from several weak signals.

The checker alone picks the right candidate where the plurality is wrong only as well as it ranks
(AUROC 0.53-0.82 on those groups), and the step log-probability is inverted there; each signal is
right on different groups. The selector is a logistic model over the *distinct* candidates of one
vote (one position, one attempt of one problem), with per-candidate features:

- ``checker_mean`` / ``checker_max``: the checker's P(correct) over the proposals of that string;
- ``logprob_mean``: their mean token log-prob;
- ``vote_share``: the share of the group's proposals that wrote it;
- ``agreement``: mean string similarity (``difflib`` ratio) to the other strings proposed, weighted by
  their counts: near-agreement (``4*5+0=20`` vs ``4*5+0=21``) counts a little, as a vote does not;
- ``length``: its token count over the group's mean.

It is trained listwise (softmax over a group's candidates, target the right ones) on the oracle labels
of the swarm's own proposals for *validation* problems (never test items; ``fit_selector``), and used
as the step swarm's ``vote="selector"``: the winner is the top candidate and its softmax probability is
the share that early commit and backtracking read.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

SELECTOR_FEATURES = ("checker_mean", "checker_max", "logprob_mean", "vote_share", "agreement", "length")


def candidate_features(props: Sequence) -> tuple[list[str], Tensor]:
    """The distinct canonical steps of one group of proposals (first-seen order) and their ``(C, F)``
    features (``SELECTOR_FEATURES``); a missing checker score (NaN) counts as 0.5."""
    steps = list(dict.fromkeys(p.step for p in props))
    counts = {s: sum(p.step == s for p in props) for s in steps}
    mean_len = sum(p.num_tokens for p in props) / len(props)
    rows = []
    for s in steps:
        mine = [p for p in props if p.step == s]
        ck = [0.5 if math.isnan(p.checker) else p.checker for p in mine]
        others = [(o, c) for o, c in counts.items() if o != s]
        total = sum(c for _, c in others)
        agree = (
            sum(c * difflib.SequenceMatcher(None, s, o).ratio() for o, c in others) / total if total else 1.0
        )
        rows.append(
            [
                sum(ck) / len(ck),
                max(ck),
                sum(p.logprob for p in mine) / len(mine),
                counts[s] / len(props),
                agree,
                mine[0].num_tokens / max(mean_len, 1e-9),
            ]
        )
    return steps, torch.tensor(rows, dtype=torch.float32)


class StepSelector(nn.Module):
    """Standardised features -> linear logit per candidate (a softmax over a group picks the step)."""

    def __init__(self, n_features: int = len(SELECTOR_FEATURES)) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def forward(self, features: Tensor) -> Tensor:
        return self.linear((features - self.mean) / self.std).squeeze(-1)

    def select(self, props: Sequence) -> tuple[str, float, dict[str, float]]:
        """(winning step, its softmax probability, every candidate's probability) for one group."""
        steps, feats = candidate_features(props)
        with torch.no_grad():
            probs = torch.softmax(self(feats), dim=0).tolist()
        best = max(range(len(steps)), key=probs.__getitem__)  # first maximum: deterministic ties
        return steps[best], probs[best], dict(zip(steps, probs))

    def state(self) -> dict:
        """Plain data (feature names and weights) for ``torch.load(weights_only=True)``."""
        return {
            "features": list(SELECTOR_FEATURES),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict) -> StepSelector:
        if list(state["features"]) != list(SELECTOR_FEATURES):
            raise ValueError(
                f"selector features {state['features']} are not this version's {SELECTOR_FEATURES}"
            )
        sel = cls()
        sel.load_state_dict(state["state_dict"])
        return sel.eval()


def selector_groups(
    results: Sequence, labels: Sequence[float], groups: Sequence[int]
) -> list[tuple[Tensor, Tensor]]:
    """``(features, right)`` per vote group of step-swarm ``results`` (proposal order, as labelled by
    ``moe_swarm.swarm.rollouts.label_step_rollouts``); a candidate is right when its proposals are."""
    props = [p for r in results for p in r.proposals]
    if len(props) != len(labels):
        raise ValueError(f"{len(props)} proposals but {len(labels)} labels")
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(int(g), []).append(i)
    out = []
    for idx in by_group.values():
        steps, feats = candidate_features([props[i] for i in idx])
        right = {props[i].step for i in idx if labels[i] > 0.5}
        out.append((feats, torch.tensor([float(s in right) for s in steps])))
    return out


def fit_selector(
    groups: Sequence[tuple[Tensor, Tensor]],
    steps: int = 300,
    lr: float = 0.05,
    l2: float = 1e-3,
    seed: int = 0,
) -> StepSelector:
    """A selector trained listwise on the groups that have a right and a wrong candidate (the only ones a
    choice can change): minimise -log(sum of softmax over the right candidates), plus ``l2`` on weights."""
    useful = [(f, y) for f, y in groups if 0 < float(y.sum()) < len(y)]
    if not useful:
        raise ValueError(
            "no vote group has both a right and a wrong candidate: nothing to learn a choice from"
        )
    torch.manual_seed(seed)
    sel = StepSelector()
    width = max(len(y) for _, y in useful)
    feats = torch.zeros(len(useful), width, len(SELECTOR_FEATURES))
    valid = torch.zeros(len(useful), width, dtype=torch.bool)
    right = torch.zeros(len(useful), width, dtype=torch.bool)
    for i, (f, y) in enumerate(useful):  # one padded batch: every step is a single forward
        feats[i, : len(y)], valid[i, : len(y)], right[i, : len(y)] = f, True, y > 0.5
    flat = feats[valid]
    sel.mean.copy_(flat.mean(0))
    sel.std.copy_(flat.std(0, unbiased=False).clamp_min(1e-6))
    opt = torch.optim.Adam(sel.parameters(), lr=lr)
    neg = torch.tensor(-1e9)
    for _ in range(steps):
        opt.zero_grad()
        logits = sel(feats)
        loss = (
            torch.logsumexp(torch.where(valid, logits, neg), 1)
            - torch.logsumexp(torch.where(right, logits, neg), 1)
        ).mean()
        loss = loss + l2 * sel.linear.weight.pow(2).sum()
        loss.backward()
        opt.step()
    return sel.eval()


def selection_accuracy(selector: StepSelector | None, groups: Sequence[tuple[Tensor, Tensor]]) -> float:
    """Share of groups (with a right and a wrong candidate) whose top candidate is right; ``None``:
    the plurality (the highest vote share, first-seen on ties), for comparison."""
    useful = [(f, y) for f, y in groups if 0 < float(y.sum()) < len(y)]
    if not useful:
        return math.nan
    share = SELECTOR_FEATURES.index("vote_share")
    hits = 0
    for f, y in useful:
        with torch.no_grad():
            score = f[:, share] if selector is None else selector(f)
        hits += int(y[int(score.argmax())] > 0.5)
    return hits / len(useful)
