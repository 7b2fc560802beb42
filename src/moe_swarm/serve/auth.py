"""Bearer-token authentication: ``authorization: Bearer <token>`` metadata on every RPC but health.

Tokens come from an environment variable (comma-separated) and/or a file (one per line, ``#`` comments),
are compared in constant time against every configured token, and are never logged. Auth can be switched
off (``serve.auth.enabled=false``) for local use.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

import grpc

from moe_swarm.serve.observability import record_code, wrap_handler
from moe_swarm.serve.settings import AuthSettings

log = logging.getLogger("moe_swarm.serve.auth")
MIN_TOKEN_CHARS = 16


def load_tokens(settings: AuthSettings, environ: Mapping[str, str] | None = None) -> list[str]:
    """Tokens from ``settings.token_env`` and ``settings.token_file``; raises when auth is on and none exist."""
    environ = os.environ if environ is None else environ
    tokens: list[str] = []
    raw_env = environ.get(settings.token_env, "") if settings.token_env else ""
    tokens += [t.strip() for t in raw_env.split(",") if t.strip()]
    if settings.token_file:
        path = Path(settings.token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"serve.auth.token_file {str(path)!r} cannot be read: {exc}") from exc
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.append(line)
    for t in tokens:
        if any(c.isspace() for c in t):
            raise ValueError(
                "an auth token contains whitespace; tokens are single words (e.g. `openssl rand -hex 32`)"
            )
    if settings.enabled and not tokens:
        raise ValueError(
            f"auth is on but no token is configured: set the environment variable {settings.token_env} "
            "(comma-separated tokens) or serve.auth.token_file, or run with serve.auth.enabled=false for local use"
        )
    short = [t for t in tokens if len(t) < MIN_TOKEN_CHARS]
    if short:
        log.warning(
            "%d auth token(s) are shorter than %d characters; use long random tokens",
            len(short),
            MIN_TOKEN_CHARS,
        )
    return tokens


def token_matches(presented: str, tokens: Iterable[str]) -> bool:
    """Constant-time comparison against every token (no early exit on a match)."""
    given = presented.encode("utf-8")
    matched = False
    for t in tokens:
        matched |= hmac.compare_digest(given, t.encode("utf-8"))
    return matched


def _deny(code: grpc.StatusCode, message: str) -> Callable:
    def make(_behavior: Callable) -> Callable:
        async def abort(_request: object, context: grpc.aio.ServicerContext) -> None:
            record_code(code)
            await context.abort(code, message)

        return abort

    return make


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects RPCs without a valid bearer token with UNAUTHENTICATED (health checks are exempt)."""

    def __init__(self, tokens: list[str], exempt_methods: Iterable[str] = ()) -> None:
        if not tokens:
            raise ValueError("BearerAuthInterceptor needs at least one token")
        self._tokens = list(tokens)
        self._exempt = frozenset(exempt_methods)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in self._exempt:
            return handler
        header = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key.lower() == "authorization":
                header = value if isinstance(value, str) else value.decode("utf-8", "replace")
                break
        if not header:
            return wrap_handler(handler, _deny(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing credentials: send the metadata 'authorization: Bearer <token>' "
                "(moe-swarm-ctl reads the token from --token or MOE_SWARM_TOKEN)",
            ))  # fmt: skip
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return wrap_handler(handler, _deny(
                grpc.StatusCode.UNAUTHENTICATED,
                "malformed authorization metadata: expected 'Bearer <token>'",
            ))  # fmt: skip
        if not token_matches(token.strip(), self._tokens):
            return wrap_handler(handler, _deny(
                grpc.StatusCode.UNAUTHENTICATED,
                "invalid token: check the token you were given for this server",
            ))  # fmt: skip
        return handler
