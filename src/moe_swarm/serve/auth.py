"""Bearer-token authentication: ``authorization: Bearer <token>`` metadata on every RPC but health.

Tokens come from an environment variable (comma-separated) and/or a file (one per line, ``#`` comments),
are compared in constant time against every configured token, and are never logged. Auth can be switched
off (``serve.auth.enabled=false``) for local use.

Scopes: a token may be limited to some of ``read`` (jobs, logs, models, runs, experiments, server info),
``train`` (start/cancel training, run benchmarks) and ``infer`` (inference, loading models) by writing
``<token>:<scope>+<scope>``, e.g. ``3f9c...:read`` or ``3f9c...:read+infer``; a bare token has every
scope. A call outside the token's scopes gets PERMISSION_DENIED naming the scope it needs.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from moe_swarm.serve.observability import call_behavior, record_code, wrap_handler
from moe_swarm.serve.settings import AuthSettings

log = logging.getLogger("moe_swarm.serve.auth")
MIN_TOKEN_CHARS = 16
SCOPES = ("read", "train", "infer")
_SERVICE = "/mcp.MCPControl/"
METHOD_SCOPES = {
    **{
        _SERVICE + m: "train"
        for m in ("StartTraining", "CancelJob", "RunBenchmark", "DeleteRun", "StartEvaluation", "StartSweep")
    },
    **{_SERVICE + m: "infer" for m in ("RunInference", "StreamInference", "LoadModel")},
}  # every other method (queries, reflection) needs "read"
# The scopes of the token that authorised the current RPC (all scopes when auth is off).
CALLER_SCOPES: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "caller_scopes", default=SCOPES
)


@dataclass(frozen=True)
class Token:
    secret: str
    scopes: tuple[str, ...] = SCOPES


def parse_token(entry: str) -> Token:
    """``<token>`` (every scope) or ``<token>:<scope>+<scope>``."""
    secret, sep, scopes_text = entry.partition(":")
    if not sep:
        return Token(secret)
    scopes = tuple(s for s in scopes_text.split("+") if s)
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(
            f"an auth token names unknown scope(s) {unknown or [scopes_text]}; write <token>:<scope>+<scope> "
            f"with scopes from {', '.join(SCOPES)} (a bare token has every scope)"
        )
    return Token(secret, tuple(s for s in SCOPES if s in scopes))


def required_scope(method: str) -> str:
    return METHOD_SCOPES.get(method, "read")


def load_tokens(settings: AuthSettings, environ: Mapping[str, str] | None = None) -> list[Token]:
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
    parsed = [parse_token(t) for t in tokens]
    short = [t for t in parsed if len(t.secret) < MIN_TOKEN_CHARS]
    if short:
        log.warning(
            "%d auth token(s) are shorter than %d characters; use long random tokens",
            len(short),
            MIN_TOKEN_CHARS,
        )
    return parsed


def token_matches(presented: str, tokens: Iterable[Token]) -> Token | None:
    """The matching token, compared in constant time against every token (no early exit on a match)."""
    given = presented.encode("utf-8")
    found = None
    for t in tokens:
        if hmac.compare_digest(given, t.secret.encode("utf-8")):
            found = t
    return found


def _with_scopes(behavior: Callable, scopes: tuple[str, ...]) -> Callable:
    """Run ``behavior`` (coroutine or async generator) with :data:`CALLER_SCOPES` set."""

    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        reset = CALLER_SCOPES.set(scopes)
        try:
            return await call_behavior(behavior, request, context)
        finally:
            CALLER_SCOPES.reset(reset)

    return wrapper


def _deny(code: grpc.StatusCode, message: str) -> Callable:
    def make(_behavior: Callable) -> Callable:
        async def abort(_request: object, context: grpc.aio.ServicerContext) -> None:
            record_code(code)
            await context.abort(code, message)

        return abort

    return make


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects RPCs without a valid bearer token with UNAUTHENTICATED (health checks are exempt)."""

    def __init__(self, tokens: list[Token], exempt_methods: Iterable[str] = ()) -> None:
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
        matched = token_matches(token.strip(), self._tokens)
        if matched is None:
            return wrap_handler(handler, _deny(
                grpc.StatusCode.UNAUTHENTICATED,
                "invalid token: check the token you were given for this server",
            ))  # fmt: skip
        needed = required_scope(handler_call_details.method)
        if needed not in matched.scopes:
            return wrap_handler(handler, _deny(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this token has the scope(s) {'+'.join(matched.scopes)}; "
                f"{handler_call_details.method.rsplit('/', 1)[-1]} needs the '{needed}' scope",
            ))  # fmt: skip
        return wrap_handler(handler, lambda b: _with_scopes(b, matched.scopes))
