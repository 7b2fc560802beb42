"""Score a training checkpoint on the data it was trained with: LM loss / bits per byte / perplexity
over a split, and greedy exact match for reasoning-task runs (what ``moe-swarm-eval`` prints)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from moe_swarm.atomic import atomic_write_text
from moe_swarm.errors import UserError
from moe_swarm.store.checkpoint import CheckpointError, load_checkpoint

# DataModules moved from moe_swarm.data to moe_swarm.training; run configs in older checkpoints name the old path.
_MOVED_TARGETS = {"moe_swarm.data.datamodules.": "moe_swarm.training.datamodules."}


def _current_targets(data_cfg: dict) -> dict:
    data_cfg = dict(data_cfg)
    target = str(data_cfg.get("_target_", ""))
    for old, new in _MOVED_TARGETS.items():
        if target.startswith(old):
            data_cfg["_target_"] = new + target[len(old) :]
    return data_cfg


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint``; returns the report that is also written as JSON."""
    from moe_swarm.data.tasks import get_task, greedy_exact_match
    from moe_swarm.data.tokenizer import ByteTokenizer

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    loaded = load_checkpoint(cfg.checkpoint, map_location=cfg.device)
    model, hparams = loaded.model, loaded.hparams
    run_cfg = loaded.run_config or {}
    if "data" not in run_cfg:
        raise CheckpointError(
            f"{cfg.checkpoint} carries no run config; it was not written by moe-swarm-train"
        )
    data_cfg = OmegaConf.merge(_current_targets(run_cfg["data"]), cfg.data_overrides or {})
    dm = hydra.utils.instantiate(data_cfg, _convert_="all")
    dm.setup("validate")
    if cfg.split == "val":
        loader = dm.val_dataloader()
    elif hasattr(dm, "test_dataloader") and getattr(dm, "datasets", None) is not None:
        loader = dm.test_dataloader()
    else:
        raise UserError(f"split={cfg.split!r} needs a reasoning-task run (text runs only have a val split)")

    t0 = time.perf_counter()
    nll_sum, n_tok = 0.0, 0
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if cfg.max_batches is not None and i >= cfg.max_batches:
                break
            targets = batch["targets"].to(cfg.device)
            out = model(batch["input_ids"].to(cfg.device))
            logits = out.logits.float().reshape(-1, out.logits.shape[-1])
            nll_sum += torch.nn.functional.cross_entropy(
                logits, targets.reshape(-1), ignore_index=-100, reduction="sum"
            ).item()
            n_tok += int((targets != -100).sum())
    loss = nll_sum / max(n_tok, 1)
    report: dict[str, Any] = {
        "checkpoint": str(cfg.checkpoint),
        "global_step": loaded.global_step,
        "split": cfg.split,
        "tokens": n_tok,
        f"{cfg.split}/loss": loss,
        f"{cfg.split}/bpb": loss / math.log(2),
        f"{cfg.split}/ppl": math.exp(min(loss, 50.0)),
    }
    task_cfg = loaded.task
    if task_cfg and cfg.em_problems > 0:
        task = get_task(task_cfg["name"], **task_cfg.get("kwargs", {}))
        tok = ByteTokenizer()
        problems = task.generate(cfg.split, int(cfg.em_problems), seed=int(run_cfg.get("seed", 0)))
        max_new = int(cfg.max_new_tokens or hparams.get("eval_max_new_tokens") or 16)
        correct = greedy_exact_match(model, problems, task, tok, max_new)
        report[f"{cfg.split}/em"] = sum(correct) / len(correct)
        report["em_problems"] = len(correct)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    out_path = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).parent / f"eval-{cfg.split}.json"
    atomic_write_text(out_path, json.dumps(report, indent=2))
    report["written_to"] = str(out_path)
    return report
