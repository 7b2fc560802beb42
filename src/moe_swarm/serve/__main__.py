"""``moe-swarm-serve`` / ``python -m moe_swarm.serve``: compose conf/serve.yaml with Hydra and serve.

    moe-swarm-serve serve.port=50051 serve.auth.enabled=false       # local use
    MOE_SWARM_TOKENS=$(openssl rand -hex 32) moe-swarm-serve serve.host=0.0.0.0

Prints ``moe-swarm serving on HOST:PORT`` when ready (``serve.port=0`` picks a free port); see
:mod:`moe_swarm.serve.server`.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import hydra
from omegaconf import DictConfig

from moe_swarm.config import config_dir
from moe_swarm.serve.server import serve
from moe_swarm.serve.settings import from_config


@hydra.main(config_path=str(config_dir()), config_name="serve", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = from_config(cfg.serve)
    except Exception as exc:
        print(f"moe-swarm-serve: bad configuration: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    try:
        code = asyncio.run(serve(settings))
    except (OSError, ValueError) as exc:
        print(f"moe-swarm-serve: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.exit(code)


def main() -> None:
    """Console script ``moe-swarm-serve`` (Hydra overrides on the command line)."""
    _hydra_main()


if __name__ == "__main__":
    main()
