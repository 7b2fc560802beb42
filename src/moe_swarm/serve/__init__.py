"""The gRPC control sidecar: `moe-swarm-serve` (server.py) and `moe-swarm-ctl` (ctl.py).

Service ``mcp.MCPControl`` (proto/mcp.proto): the seed's StartTraining / RunBenchmark / RunInference plus
jobs, models and server info; standard health and reflection. See docs/control_plane.md.
"""
