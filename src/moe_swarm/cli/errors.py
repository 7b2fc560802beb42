"""How the console scripts report a user's mistake: the message on stderr, exit code 2, no traceback.

A bad config value, a missing file, a run id another process holds: the message says what was
wrong and what to do, and a traceback would only bury it. ``HYDRA_FULL_ERROR=1`` (Hydra's own
switch) re-raises instead, for debugging.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from moe_swarm.errors import UserError

USAGE_EXIT_CODE = 2


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every exception type whose message is meant for the user as is."""
    from moe_swarm.scale.cluster import ClusterConfigError
    from moe_swarm.store.checkpoint import CheckpointError

    return (UserError, CheckpointError, ClusterConfigError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user error raised inside into ``error: <message>`` on stderr and exit code 2."""
    try:
        yield
    except user_error_types() as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(USAGE_EXIT_CODE) from None
