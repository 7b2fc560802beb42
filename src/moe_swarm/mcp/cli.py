"""``moe-swarm-mcp``: the MCP server over stdio (default) or Streamable HTTP.

    moe-swarm-mcp                                   # stdio, sidecar at MOE_SWARM_TARGET (127.0.0.1:50051)
    moe-swarm-mcp --http --host 127.0.0.1 --port 8765 [--certfile cert.pem --keyfile key.pem]

The sidecar's address, token and CA certificate come from --target/--token/--ca-cert or the same
environment variables as moe-swarm-ctl (MOE_SWARM_TARGET, MOE_SWARM_TOKEN, MOE_SWARM_CA_CERT). Over stdio,
stdout carries only JSON-RPC messages: every log line goes to stderr. Over HTTP, clients send
``Authorization: Bearer <token>`` with a token of the sidecar (its scopes apply); Host and Origin headers
are checked against the allowed lists.
"""

from __future__ import annotations

import argparse
import logging
import sys

from moe_swarm.mcp.backend import SidecarConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moe-swarm-mcp", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    p.add_argument("--target", help="sidecar host:port (env MOE_SWARM_TARGET, default 127.0.0.1:50051)")
    p.add_argument(
        "--token", help="bearer token for the sidecar (env MOE_SWARM_TOKEN); HTTP callers use their own"
    )
    p.add_argument("--ca-cert", help="PEM certificate to trust for a TLS sidecar (env MOE_SWARM_CA_CERT)")
    p.add_argument("--tls", action="store_true", help="reach the sidecar over TLS with the system roots")
    p.add_argument("--http", action="store_true", help="serve Streamable HTTP instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="HTTP port (0 = a free one; default 8765)")
    p.add_argument("--path", default="/mcp", help="HTTP endpoint path (default /mcp)")
    p.add_argument("--certfile", help="serve HTTPS with this PEM certificate chain (with --keyfile)")
    p.add_argument("--keyfile", help="private key of --certfile")
    p.add_argument("--allowed-host", action="append", default=[],
                   help="extra allowed Host header value, e.g. mcp.example.com:443 (repeatable)")  # fmt: skip
    p.add_argument("--allowed-origin", action="append", default=[],
                   help="extra allowed Origin, e.g. https://app.example.com (repeatable)")  # fmt: skip
    p.add_argument("--no-auth", action="store_true",
                   help="HTTP without bearer tokens (only for a trusted host; the default is the sidecar's tokens)")  # fmt: skip
    p.add_argument("--log-level", default="WARNING", help="stderr log level (default WARNING)")
    return p


def _log_to_stderr(level: str) -> None:
    """Every log record goes to stderr: over stdio, stdout belongs to the protocol."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stderr(args.log_level)
    from moe_swarm.mcp.backend import Sidecar

    config = SidecarConfig.from_env(target=args.target, token=args.token, ca_cert=args.ca_cert,
                                    tls=args.tls or None)  # fmt: skip
    sidecar = Sidecar(config)
    if args.http:
        from moe_swarm.mcp.http_transport import serve_http

        return serve_http(args, sidecar)
    from moe_swarm.mcp.server import build_server

    build_server(sidecar).run("stdio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
