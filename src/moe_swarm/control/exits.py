"""Exit interpretation: what a child's exit status and the end of its log say went wrong.

A training child runs under Hydra, whose error output ends with a trailer that is not a reason; a
Python child ends with a traceback whose last exception line is. :func:`failure_reason` extracts that,
:func:`describe_exit` names an exit status or signal.
"""

from __future__ import annotations

import re
import signal

HYDRA_TRAILER = "Set the environment variable HYDRA_FULL_ERROR=1"
HYDRA_ERROR_START = "Error executing job with overrides:"
LOG_RECORD = re.compile(r"^(\[\d{4}-\d\d-\d\d [^\]]*\]\[|(DEBUG|INFO|WARNING): )")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b(: |$)")
MAX_REASON_LINES = 6
MAX_REASON_CHARS = 800


def failure_reason(tail: list[str]) -> str:
    """What a failed child said went wrong, from the end of its log.

    Hydra's trailer ("Set the environment variable HYDRA_FULL_ERROR=1 ...") and log records are not a
    reason: they are dropped. The reason starts after Hydra's "Error executing job with overrides" line,
    or at the exception line that ends a Python traceback; otherwise it is the last few lines (Hydra's
    and the config validator's messages), joined with " | ".
    """
    lines = [
        ln.rstrip()
        for ln in tail
        if ln.strip() and not ln.startswith(HYDRA_TRAILER) and not LOG_RECORD.match(ln)
    ]
    if not lines:
        return "no output (see the job's log)"
    start = max(0, len(lines) - MAX_REASON_LINES)
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(HYDRA_ERROR_START):
            start = i + 1
            break
        if i >= start and lines[i].startswith(("  File ", "Traceback (most recent call last)")):
            start = i + 1
            break
    exc = next((i for i in range(start, len(lines)) if EXCEPTION_LINE.match(lines[i])), None)
    if exc is not None:
        start = exc
    reason = " | ".join(ln.strip() for ln in lines[start:]) or lines[-1].strip()
    return reason[:MAX_REASON_CHARS]


def describe_exit(code: int) -> str:
    """``exit code 2`` or ``killed by SIGTERM`` (asyncio reports a signal as a negative code)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit code {code}"
