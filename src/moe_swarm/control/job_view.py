"""The one public view of a job: what GetJob returns, what the MCP tools return, what clients print.

The registry's :class:`~moe_swarm.control.registry.JobRecord` holds more (argv, pid bookkeeping, the
request fingerprint); :meth:`JobRecord.view` gives this. The gRPC servicer converts it to the wire's
``Job`` message and back (:mod:`moe_swarm.serve.convert`); the MCP server returns it as the tools' typed
result, with each field's ``doc`` as its description in the output schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TERMINAL_STATE_NAMES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


def _doc(text: str, **kw) -> dict:
    return {"metadata": {"doc": text}, **kw}


@dataclass
class JobView:
    """A training or benchmark job as a client sees it."""

    job_id: str
    kind: str = field(**_doc("training or benchmark"))
    state: str = field(**_doc("PENDING, RUNNING, SUCCEEDED, FAILED or CANCELLED"))
    config_path: str = ""
    overrides: list[str] = field(default_factory=list)
    run_id: str = ""
    request_id: str = ""
    created_unix: float = 0.0
    started_unix: float = 0.0
    finished_unix: float = 0.0
    pid: int = 0
    exit_code: int | None = field(
        default=None, **_doc("exit status of the child; negative = killed by that signal")
    )
    message: str = field(default="", **_doc("why the job is in its state (the failure reason for FAILED)"))
    log_tail: list[str] = field(default_factory=list, **_doc("last log lines, for failed jobs"))
    run_dir: str = ""
    checkpoint: str = field(default="", **_doc("newest checkpoint of the run, '' until one exists"))
    metrics: dict[str, float] = field(
        default_factory=dict, **_doc("latest value of every metric the job reported")
    )
    cancel_requested: bool = False
    priority: int = field(default=0, **_doc("queued jobs start highest priority first, then oldest first"))
    queue_position: int = field(
        default=0, **_doc("1 = starts next; 0 = not waiting (running, finished, or not queued)")
    )
    restarts: int = field(default=0, **_doc("times a sidecar restart requeued it to resume its run"))
    finished: bool = field(default=False, **_doc("True once the state is SUCCEEDED, FAILED or CANCELLED"))

    def __post_init__(self) -> None:
        self.finished = self.state in TERMINAL_STATE_NAMES
