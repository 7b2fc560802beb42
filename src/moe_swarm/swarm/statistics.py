"""Statistics for comparing swarm methods on the same problems (plain PyTorch/Python).

- ``paired_bootstrap_ci``: mean difference of two methods' per-problem scores and a percentile
  bootstrap CI, problems resampled with replacement (pairs kept together, so difficulty cancels).
- ``two_level_bootstrap_ci``: the same over several base-model training seeds: seeds are resampled,
  then problems within each drawn seed, so the interval covers seed-to-seed variation too.
- ``holm_adjust``: Holm's step-down correction of p-values for a family of comparisons.
- ``ranking_auc``: P(a right record scores above a wrong one), the scorer quality a vote needs when
  computed within one problem.
- ``mean_of_defined``: the mean over values that are defined (NaN marks "undefined for this problem").
- ``within_group_auc`` / ``ranking_quality``: ``ranking_auc`` within groups (the proposals of one step),
  over all groups and over those whose plurality vote went wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _check_bootstrap(samples: int, level: float) -> None:
    if samples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need samples >= 1 and 0 < level < 1, got samples={samples}, level={level}")


def _interval(means: Tensor, level: float) -> tuple[float, float, float]:
    """Percentile interval of bootstrap means and the two-sided bootstrap p-value of "mean = 0"."""
    alpha = (1.0 - level) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    below = float((means <= 0).double().mean())
    above = float((means >= 0).double().mean())
    return low, high, min(1.0, 2.0 * min(below, above))


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], samples: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean of ``a - b`` over paired items, a percentile bootstrap CI and a two-sided bootstrap p-value.

    ``a[i]`` and ``b[i]`` are two methods' scores on the same problem i, so the resampling keeps pairs
    together and problem difficulty cancels out of the difference.
    """
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap needs equal lengths, got {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError("paired bootstrap needs at least one pair")
    _check_bootstrap(samples, level)
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    means = torch.empty(samples, dtype=torch.float64)
    step = max(1, 4_000_000 // d.numel())  # bound the index matrix to ~32 MB
    for start in range(0, samples, step):
        k = min(step, samples - start)
        idx = torch.randint(d.numel(), (k, d.numel()), generator=gen)
        means[start : start + k] = d[idx].mean(1)
    low, high, p = _interval(means, level)
    return {
        "diff": float(d.mean()),
        "low": low,
        "high": high,
        "p_value": p,
        "n": int(d.numel()),
        "level": level,
        "samples": samples,
    }


def two_level_bootstrap_ci(
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    samples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Mean of ``a - b`` over seeds x problems with a two-level (seeds, then problems) bootstrap CI.

    ``a[s][i]``: method a's score on problem i under base-model seed s (each seed may have its own
    problems). Each bootstrap sample draws seeds with replacement, then, for each drawn seed, its
    problems with replacement; the statistic is the mean over drawn seeds of the per-seed mean
    difference. With one seed this is the paired bootstrap.
    """
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(
            f"two-level bootstrap needs the same number (>= 1) of seeds, got {len(a)} and {len(b)}"
        )
    _check_bootstrap(samples, level)
    diffs = []
    for s, (x, y) in enumerate(zip(a, b)):
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"seed {s}: need equal, non-zero problem counts, got {len(x)} and {len(y)}")
        diffs.append(torch.tensor(x, dtype=torch.float64) - torch.tensor(y, dtype=torch.float64))
    gen = torch.Generator().manual_seed(seed)
    n_seeds = len(diffs)
    per_seed = torch.empty(n_seeds, samples, dtype=torch.float64)  # bootstrap means of each seed
    for s, d in enumerate(diffs):
        idx = torch.randint(d.numel(), (samples, d.numel()), generator=gen)
        per_seed[s] = d[idx].mean(1)
    pick = torch.randint(n_seeds, (samples, n_seeds), generator=gen)
    means = per_seed.gather(0, pick.T).mean(0)
    low, high, p = _interval(means, level)
    return {
        "diff": float(torch.stack([d.mean() for d in diffs]).mean()),
        "low": low,
        "high": high,
        "p_value": p,
        "n": int(sum(d.numel() for d in diffs)),
        "seeds": n_seeds,
        "level": level,
        "samples": samples,
    }


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error control), in the input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def mean_of_defined(xs: Sequence[float]) -> float:
    """Mean over the values that are not NaN (NaN marks "undefined for this problem", e.g. an AUROC of a
    problem whose records are all right); NaN if no value is defined."""
    xs = [x for x in xs if not math.isnan(x)]
    return float(sum(xs) / len(xs)) if xs else float("nan")


def ranking_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(a random right record scores above a random wrong one), ties counting half; NaN unless both occur.

    Computed within one problem it says whether a scorer can pick the right answer among the candidates,
    which is what best-of-N and weighted votes need (an AUROC over all problems also rewards knowing
    which problems are easy).
    """
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def within_group_auc(scores: Sequence[float], labels: Sequence[bool], groups: Sequence) -> tuple[float, int]:
    """Mean ranking AUROC within groups (e.g. one problem's proposals at one step) that hold right and
    wrong items, and how many such groups there were (NaN, 0 when none)."""
    by: dict = {}
    for s, y, g in zip(scores, labels, groups, strict=True):
        by.setdefault(g, ([], []))
        by[g][0].append(float(s))
        by[g][1].append(bool(y))
    aucs = [ranking_auc(s, y) for s, y in by.values()]
    return mean_of_defined(aucs), sum(not math.isnan(a) for a in aucs)


def ranking_quality(
    scores: Sequence[float], labels: Sequence[bool], groups: Sequence, vote_wrong: Sequence[bool]
) -> dict[str, float | int]:
    """``within_group_auc`` of ``scores`` over all groups (``auc_within``, ``groups``) and over the rows
    whose group's plurality winner is wrong while a right item is in it (``auc_vote_wrong``,
    ``groups_vote_wrong``): where a better scorer could change a vote's outcome."""
    wrong = [k for k, w in enumerate(vote_wrong) if w]
    auc, n = within_group_auc(scores, labels, groups)
    auc_w, n_w = within_group_auc(
        [scores[k] for k in wrong], [labels[k] for k in wrong], [groups[k] for k in wrong]
    )
    return {"auc_within": auc, "groups": n, "auc_vote_wrong": auc_w, "groups_vote_wrong": n_w}
