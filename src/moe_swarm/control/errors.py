"""Domain exceptions of the control core: why a request is refused, in words the caller can act on.

The core never speaks a transport: the gRPC servicer maps each class to a status code in one table
(:mod:`moe_swarm.serve.status`). Messages say what was wrong and what to do about it.
"""

from __future__ import annotations


class ControlError(Exception):
    """A request the control core refuses; ``message`` tells the caller what to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidArgument(ControlError):
    """The request itself is wrong (a bad value, an unknown name)."""


class NotFound(ControlError):
    """The job, run, model or experiment named does not exist."""


class FailedPrecondition(ControlError):
    """The request is fine but the state is not (no checkpoint yet, a run id in use)."""


class Busy(ControlError):
    """A limit is reached (concurrent jobs); retry later."""


class PermissionDenied(ControlError):
    """The request names something outside what this server may touch (a path outside its roots)."""


class Unavailable(ControlError):
    """The server is shutting down or a queue is closed; retry against the next instance."""


class DeadlineExceeded(ControlError):
    """A waited-for job did not finish in time."""


class JobFailed(ControlError):
    """A job the caller waited for ended without success (its message says why)."""
