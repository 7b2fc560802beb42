"""Streamable HTTP transport of the MCP server: bearer tokens checked by the sidecar, Host/Origin checks, TLS."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

READY_PREFIX = "moe-swarm-mcp serving on "


def _transport_security(args: argparse.Namespace, port: int) -> Any:
    from mcp.server.transport_security import TransportSecuritySettings

    scheme = "https" if args.certfile else "http"
    hosts = {f"{args.host}:{port}", f"127.0.0.1:{port}", f"localhost:{port}", *args.allowed_host}
    origins = {f"{scheme}://{h}" for h in hosts if not h.startswith(("http://", "https://"))}
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=sorted(hosts),
                                     allowed_origins=sorted(origins | set(args.allowed_origin)))  # fmt: skip


def sidecar_auth_problem(sidecar: Any) -> str:
    """Why HTTP clients could not be served with the sidecar's tokens ("" = none found): a sidecar with
    auth off accepts any token, so it cannot vouch for one. An unreachable sidecar is no reason to
    refuse (it may start later); its tokens are checked on each request."""
    import asyncio

    from moe_swarm.mcp.backend import Sidecar, SidecarError
    from moe_swarm.serve.proto import mcp_pb2 as pb

    async def ask() -> str:
        probe = Sidecar(sidecar.config)
        try:
            info = await probe.call("GetServerInfo", pb.GetServerInfoRequest(), timeout=10)
        except SidecarError:  # UNAUTHENTICATED: auth is on; anything else: checked per request
            return ""
        finally:
            await probe.close()
        if info.auth_enabled:
            return ""
        return (
            f"the sidecar at {sidecar.config.target} runs with auth off (serve.auth.enabled=false), so it "
            "cannot vouch for the bearer tokens of HTTP clients and every request would get 401. Turn the "
            "sidecar's auth on (MOE_SWARM_TOKENS), or pass --no-auth to serve HTTP without tokens on a "
            "trusted host"
        )

    return asyncio.run(ask())


def serve_http(args: argparse.Namespace, sidecar: Any) -> int:
    import anyio
    import uvicorn
    from mcp.server.auth.settings import AuthSettings

    from moe_swarm.mcp.auth import SidecarTokenVerifier
    from moe_swarm.mcp.server import build_server

    if bool(args.certfile) != bool(args.keyfile):
        print("moe-swarm-mcp: error: --certfile and --keyfile go together", file=sys.stderr)
        return 2
    problem = "" if args.no_auth else sidecar_auth_problem(sidecar)
    if problem:
        print(f"moe-swarm-mcp: error: {problem}", file=sys.stderr)
        return 2
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        print(f"moe-swarm-mcp: error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    sock.listen(2048)  # connections queue from here on, so the ready line below is true at once
    port = sock.getsockname()[1]
    scheme = "https" if args.certfile else "http"
    host = f"[{args.host}]" if ":" in args.host else args.host
    base = f"{scheme}://{host}:{port}"
    kwargs: dict[str, Any] = {}
    if not args.no_auth:
        kwargs["token_verifier"] = SidecarTokenVerifier(sidecar)
        kwargs["auth"] = AuthSettings(
            issuer_url=base,
            resource_server_url=f"{base}{args.path}",
            required_scopes=["read"],
            # the sidecar validates each token itself (SidecarTokenVerifier); its tokens carry no resource
            validate_token_resource=False,
        )
    mcp = build_server(sidecar, **kwargs)
    app = mcp.streamable_http_app(streamable_http_path=args.path, transport_security=_transport_security(args, port),
                                  host=args.host)  # fmt: skip
    config = uvicorn.Config(app, log_level=args.log_level.lower(), ssl_certfile=args.certfile,
                            ssl_keyfile=args.keyfile, log_config=None)  # fmt: skip
    server = uvicorn.Server(config)
    print(f"{READY_PREFIX}{base}{args.path}", file=sys.stderr, flush=True)
    anyio.run(lambda: server.serve(sockets=[sock]))
    return 0
