"""The gRPC control sidecar: `moe-swarm-serve` (server.py) and `moe-swarm-ctl` (ctl.py).

Service ``mcp.MCPControl`` (proto/mcp.proto): the seed's StartTraining / RunBenchmark / RunInference plus
jobs, models and server info; standard health and reflection. A thin servicer: the work is the control
core's (:mod:`moe_swarm.control`); ``service`` translates messages (``convert``) and ``status`` maps the
core's exceptions to status codes. See docs/control_plane.md.
"""

import os

# gRPC's core logs connection events such as "Got goaway [2] ..." (the peer closed an idle or stopping
# connection) on stderr at INFO; they are not errors of this program. Set before grpc starts; a user's own
# GRPC_VERBOSITY (e.g. DEBUG to debug the transport) wins. tests/test_serve_goaway.py checks both.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
