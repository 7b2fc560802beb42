"""moe-swarm: train, benchmark and serve sparse Mixture-of-Experts LMs with a swarm reasoning loop."""

__version__ = "0.1.0"
