"""`moe-swarm-eval`: score a training checkpoint (val bpb / perplexity, greedy exact match).

moe-swarm-eval checkpoint=runs/<run_id>/checkpoints/last.ckpt
moe-swarm-eval checkpoint=... split=test em_problems=1000     # reasoning-task runs (text runs: val only)

The scoring lives in :mod:`moe_swarm.training.lm_eval`; this module composes the config and prints.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from moe_swarm.cli.errors import user_errors
from moe_swarm.config import config_dir, register_resolvers
from moe_swarm.errors import UserError
from moe_swarm.training.lm_eval import evaluate

__all__ = ["evaluate", "main"]

register_resolvers()


@hydra.main(config_path=str(config_dir()), config_name="eval", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    with user_errors():
        if OmegaConf.is_missing(cfg, "checkpoint"):
            raise UserError(
                "no checkpoint given; usage: moe-swarm-eval checkpoint=runs/<run_id>/checkpoints/last.ckpt "
                "[split=val|test] [em_problems=N] (see --help)"
            )
        report = evaluate(cfg)
    for k, v in report.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
