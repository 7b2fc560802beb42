"""``python -m moe_swarm.bench``: the ``moe-swarm-bench`` CLI over the in-process suites of
:mod:`moe_swarm.bench.registry` (no ``serve`` suite: that one starts sidecars)."""

from __future__ import annotations

import sys

from moe_swarm.bench.cli import main
from moe_swarm.bench.registry import SUITES

if __name__ == "__main__":
    sys.exit(main(available=SUITES))
