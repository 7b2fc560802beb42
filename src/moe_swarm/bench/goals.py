"""The project's performance goals, checked against the rows of a run."""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from moe_swarm.bench.results import Row

_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Goal:
    description: str
    metric_pattern: str  # regex over Row.metric; every matching row must pass
    op: str  # ">=" or "<="
    target: float


GOALS = (
    Goal("moe_layer: auto >= 1.5x faster than reference_loop at E=64, k=8", r"^moe_layer/E64k8_[^/]+/auto_speedup$", ">=", 1.5),
    Goal("moe_layer: auto never slower than reference_loop", r"^moe_layer/[^/]+/auto_speedup$", ">=", 1.0),
    Goal("generate: KV cache >= 5x the tokens/s of full recompute at 256 new tokens", r"^generate/new256/kv_speedup$", ">=", 5.0),
    Goal("generate: 8 agents batched <= 2.5x the wall time of one agent", r"^generate/agents8_[^/]+/batched_over_single$", "<=", 2.5),
    Goal("generate: 16 agents batched <= 2.5x the wall time of one agent", r"^generate/agents16_[^/]+/batched_over_single$", "<=", 2.5),
    Goal("generate: compiled KV decode >= 5x full recompute at 256 new tokens", r"^generate/new256/kv_compiled_speedup$", ">=", 5.0),
    Goal("moe_layer: bf16-mixed layer within 1.1x of the pure-bf16 layer", r"^moe_layer/[^/]+/mixed_over_bf16$", "<=", 1.1),
    Goal("moe_layer: ours >= 1.2x HF's fastest experts backend", r"^moe_layer/[^/]+/hf_best_over_ours_[^/]+$", ">=", 1.2),
    Goal("moe_layer: ours / dense floor <= 1.3 at the Mixtral shape", r"^moe_layer/mixtral_[^/]+/ours_bf16_over_floor$", "<=", 1.3),
    Goal("moe_layer: ours / dense floor <= 1.5 at the fine-grained shapes", r"^moe_layer/(olmoe|qwen3)_[^/]+/ours_bf16_over_floor$", "<=", 1.5),
    Goal("hf: import at least as fast as transformers' from_pretrained", r"^hf/mixtral_[^/]+_d4096_[^/]+/import_over_transformers$", "<=", 1.0),
    Goal("hf: export at least as fast as transformers' save_pretrained", r"^hf/mixtral_[^/]+_d4096_[^/]+/export_over_transformers$", "<=", 1.0),
    Goal("hf: import peak RSS above baseline <= 1.25x the checkpoint's bytes", r"^hf/mixtral_[^/]+_d4096_[^/]+/import_rss_over_checkpoint$", "<=", 1.25),
    Goal("train_step: compiled >= 1.15x eager (GPU model)", r"^train_step/[^/]+/compiled_speedup$", ">=", 1.15),
    Goal("train_step: >= 30% MFU compiled on the GPU", r"^train_step/d1024[^/]+/compiled_mfu$", ">=", 0.30),
)  # fmt: skip


@dataclass
class GoalResult:
    goal: Goal
    status: str  # "met", "not met", "not measured"
    measured: list[tuple[str, float]]  # (case, value) of every matching row


def check_goals(rows: list[Row], goals: tuple[Goal, ...] = GOALS) -> list[GoalResult]:
    results = []
    for goal in goals:
        pattern = re.compile(goal.metric_pattern)
        matched = [(r.metric.split("/")[1], r.value) for r in rows if pattern.match(r.metric)]
        if not matched:
            status = "not measured"
        elif all(_OPS[goal.op](v, goal.target) for _, v in matched):
            status = "met"
        else:
            status = "not met"
        results.append(GoalResult(goal, status, matched))
    return results
