"""The MCP resources (jobs, logs, metrics, run files, benchmark rows, experiments) and prompts
(diagnose a run, compare two runs), each a read through one or two sidecar RPCs."""

from __future__ import annotations

import difflib
import json
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError

from moe_swarm.mcp.backend import Sidecar, SidecarError
from moe_swarm.mcp.calls import caller_token, job_result, log_page
from moe_swarm.mcp.models import as_json, benchmark_from_proto
from moe_swarm.serve.proto import mcp_pb2 as pb


def register_resources(mcp: MCPServer, sidecar: Sidecar) -> None:
    """The ``moe://`` resources; a sidecar error is a resource error with the sidecar's message."""

    async def read(method: str, request: Any) -> Any:
        try:
            return await sidecar.call(method, request, token=caller_token())
        except SidecarError as e:
            raise ResourceError(f"{e.code}: {e.message}") from None

    async def run_file(run_id: str, field: str, missing: str) -> str:
        """One file of a run (GetRun's ``field``), or a resource error saying it does not exist yet."""
        text = getattr(await read("GetRun", pb.GetRunRequest(run_id=run_id)), field)
        if not text:
            raise ResourceError(f"run {run_id!r} has no {missing}")
        return text

    @mcp.resource("moe://jobs/{job_id}", mime_type="application/json", description="A job (JSON).")
    async def job_resource(job_id: str) -> str:
        return as_json(job_result(await read("GetJob", pb.GetJobRequest(job_id=job_id))))

    @mcp.resource(
        "moe://jobs/{job_id}/logs", mime_type="text/plain", description="The last 200 lines of a job's log."
    )
    async def job_logs_resource(job_id: str) -> str:
        try:
            return (await log_page(sidecar, job_id, 200, -1)).text
        except ToolError as e:
            raise ResourceError(str(e)) from None

    @mcp.resource(
        "moe://jobs/{job_id}/metrics",
        mime_type="application/json",
        description="A job's latest metrics (JSON).",
    )
    async def job_metrics_resource(job_id: str) -> str:
        job = await read("GetJob", pb.GetJobRequest(job_id=job_id))
        return as_json(dict(job.metrics))

    @mcp.resource(
        "moe://runs/{run_id}/config",
        mime_type="application/yaml",
        description="A run's composed Hydra config.",
    )
    async def run_config_resource(run_id: str) -> str:
        return await run_file(run_id, "config_yaml", "composed config yet (its job has not started)")

    @mcp.resource(
        "moe://runs/{run_id}/summary", mime_type="application/json", description="A run's summary.json."
    )
    async def run_summary_resource(run_id: str) -> str:
        return await run_file(run_id, "summary_json", "summary.json yet (it is written when training ends)")

    @mcp.resource(
        "moe://bench/{job_id}/results", mime_type="application/json", description="A benchmark job's rows."
    )
    async def bench_results_resource(job_id: str) -> str:
        return as_json(
            benchmark_from_proto(await read("GetBenchmarkResults", pb.GetJobRequest(job_id=job_id)))
        )

    @mcp.resource(
        "moe://experiments/{name}", mime_type="application/yaml", description="An experiment's YAML."
    )
    async def experiment_resource(name: str) -> str:
        resp = await read("ListExperiments", pb.ListExperimentsRequest())
        for e in resp.experiments:
            if e.name == name:
                return e.yaml
        names = ", ".join(e.name for e in resp.experiments)
        raise ResourceError(f"no experiment {name!r}; choose from {names}")


def register_prompts(mcp: MCPServer, sidecar: Sidecar) -> None:
    """Prompts that gather a run's files and state for the model to reason about."""

    @mcp.prompt(description="Diagnose a training run from its summary, config and job state.")
    async def diagnose_run(run_id: str) -> str:
        run = await _run_or_error(sidecar, run_id)
        parts = [
            f"Diagnose the moe-swarm training run {run_id!r}. Say whether it trained well (loss going down, "
            "validation metric at the end), what went wrong if it failed (quote the error), and what to change "
            "next (overrides for start_training). Use tail_logs and the moe://jobs/{job_id}/metrics resource "
            "for more detail.",
        ]
        parts.append(run if isinstance(run, str) else _describe_run(run))
        for job_id in [] if isinstance(run, str) else list(run.job_ids)[:1]:
            try:
                job = job_result(
                    await sidecar.call("GetJob", pb.GetJobRequest(job_id=job_id), token=caller_token())
                )
                parts.append(f"Newest job {job_id}: {job.state}; message: {job.message or '-'}\n"
                             f"latest metrics: {json.dumps(job.metrics, sort_keys=True)}")  # fmt: skip
            except SidecarError as e:
                parts.append(f"(job {job_id}: {e.message})")
        return "\n\n".join(parts)

    @mcp.prompt(description="Compare two training runs: config differences and final metrics side by side.")
    async def compare_runs(run_a: str, run_b: str) -> str:
        a, b = await _run_or_error(sidecar, run_a), await _run_or_error(sidecar, run_b)
        parts = [
            f"Compare the moe-swarm runs {run_a!r} and {run_b!r}: which is better on the final validation "
            "metric, by how much, and which config difference most likely explains it. Be careful with "
            "differences smaller than run-to-run noise (one seed each).",
        ]
        for name, run in ((run_a, a), (run_b, b)):
            parts.append(
                run if isinstance(run, str) else f"Run {name} summary:\n{run.summary_json or '(none yet)'}"
            )
        if not isinstance(a, str) and not isinstance(b, str):
            diff = difflib.unified_diff(a.config_yaml.splitlines(), b.config_yaml.splitlines(), run_a, run_b,
                                        lineterm="", n=0)  # fmt: skip
            parts.append("Config diff:\n" + ("\n".join(diff) or "(identical configs)"))
        return "\n\n".join(parts)


async def _run_or_error(sidecar: Sidecar, run_id: str) -> pb.RunInfo | str:
    try:
        return await sidecar.call("GetRun", pb.GetRunRequest(run_id=run_id), token=caller_token())
    except SidecarError as e:
        return f"(run {run_id}: {e.code}: {e.message})"


def _describe_run(run: pb.RunInfo) -> str:
    return (
        f"Run {run.run_id} ({run.run_dir}), checkpoint: {run.checkpoint or '(none)'}\n"
        f"summary.json:\n{run.summary_json or '(none yet: written when training ends)'}\n"
        f"composed config:\n{run.config_yaml or '(none yet)'}"
    )
