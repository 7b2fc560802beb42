"""The `serve` benchmark suite: RunInference through a real sidecar, batching on vs off."""

from moe_swarm.serve.loadtest import run_suite as run

__all__ = ["run"]
