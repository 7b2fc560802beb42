"""Generated gRPC modules of the control plane (regenerate: python -m moe_swarm.serve.codegen)."""
