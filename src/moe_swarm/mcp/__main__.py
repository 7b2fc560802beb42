"""``python -m moe_swarm.mcp``: the MCP server (see :mod:`moe_swarm.mcp.cli`)."""

import sys

from moe_swarm.mcp.cli import main

if __name__ == "__main__":
    sys.exit(main())
