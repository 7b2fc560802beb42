"""`moe-swarm-eval`: score a training checkpoint (val bpb / perplexity, greedy exact match).

moe-swarm-eval checkpoint=runs/<run_id>/checkpoints/last.ckpt
moe-swarm-eval checkpoint=... split=test em_problems=1000

The scoring lives in :mod:`moe_swarm.lit.lm_eval`; this module composes the config and prints.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from moe_swarm.cli import user_errors
from moe_swarm.config import config_dir, register_resolvers
from moe_swarm.lit.lm_eval import evaluate

__all__ = ["evaluate", "main"]

register_resolvers()


@hydra.main(config_path=str(config_dir()), config_name="eval", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    with user_errors():
        report = evaluate(cfg)
    for k, v in report.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
