"""Bearer-token auth of the Streamable HTTP transport, by the sidecar's own tokens and scopes.

The verifier asks the sidecar (GetServerInfo with the presented token) whether the token is valid and
which scopes it has (read, train, infer); tool calls then reach the sidecar with the caller's token, so
the sidecar enforces the scopes (a read-only token gets PERMISSION_DENIED from start_training). No token
list lives here. Answers are cached for a short while so every HTTP request does not cost an RPC.
"""

from __future__ import annotations

import hashlib
import logging
import time

from mcp.server.auth.provider import AccessToken

from moe_swarm.mcp.backend import Sidecar, SidecarError
from moe_swarm.serve.proto import mcp_pb2 as pb

log = logging.getLogger("moe_swarm.mcp.auth")
CACHE_S = 30.0


class SidecarTokenVerifier:
    """:class:`mcp.server.auth.provider.TokenVerifier` backed by the sidecar."""

    def __init__(self, sidecar: Sidecar, cache_s: float = CACHE_S) -> None:
        self.sidecar = sidecar
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, AccessToken | None]] = {}

    async def verify_token(self, token: str) -> AccessToken | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.cache_s:
            return hit[1]
        try:
            info = await self.sidecar.call(
                "GetServerInfo", pb.GetServerInfoRequest(), token=token, timeout=10
            )
        except SidecarError as e:
            if e.code not in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                log.warning("cannot verify a token: %s", e.message)
                return None  # not cached: the sidecar may be back soon
            result = None
        else:
            if not info.auth_enabled:
                log.error(
                    "the sidecar at %s has auth off, so it cannot vouch for tokens: refusing HTTP clients "
                    "(turn sidecar auth on, or run this server with --no-auth on a trusted host)",
                    self.sidecar.config.target,
                )
                return None
            result = AccessToken(token=token, client_id="moe-swarm-token", scopes=list(info.caller_scopes))
        self._cache[key] = (time.monotonic(), result)
        return result
