"""The MCP resources (jobs, logs, metrics, run files, benchmark rows, experiments) and prompts
(diagnose a run, compare two runs), each a read through one or two sidecar RPCs."""

from __future__ import annotations

import difflib
import json
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import Resource as MCPResource
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from moe_swarm.mcp.backend import Sidecar, SidecarError
from moe_swarm.mcp.calls import caller_token, job_result, log_page, mcp_wording
from moe_swarm.mcp.models import as_json, benchmark_from_proto, sweep_from_proto
from moe_swarm.serve.proto import mcp_pb2 as pb

# Resource not found: -32002 in the handshake-era spec (2025-11-25 and before); protocol 2026-07-28
# retired it for -32602 (SEP-2164), which the SDK's ResourceNotFoundError sends.
RESOURCE_NOT_FOUND = -32002


def not_found(ctx: Context, uri: str, message: str) -> Exception:
    """The protocol's resource-not-found error for the session's era (not -32603, an internal error)."""
    if ctx.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
        return MCPError(code=RESOURCE_NOT_FOUND, message=message, data={"uri": uri})
    return ResourceNotFoundError(message)


MAX_LISTED = 100  # newest runs and jobs each that resources/list shows


class SidecarMCPServer(MCPServer):
    """The MCP server whose ``resources/list`` also names the sidecar's runs and jobs (newest first), so a
    host that browses resources finds them without knowing the URI templates."""

    def __init__(self, sidecar: Sidecar, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sidecar = sidecar

    async def list_resources(self) -> list[MCPResource]:
        listed = await super().list_resources()
        try:
            runs = await self.sidecar.call(
                "ListRuns", pb.ListRunsRequest(limit=MAX_LISTED), token=caller_token()
            )
            jobs = await self.sidecar.call(
                "ListJobs", pb.ListJobsRequest(limit=MAX_LISTED), token=caller_token()
            )
        except SidecarError:  # unreachable or refused: the static resources still list
            return listed
        for r in runs.runs:
            what = f"{r.experiment or 'run'} {r.status or ''}, step {r.global_step}".strip()
            for plot in ("loss.png", "expert_load.png") if r.checkpoint else ():
                listed.append(MCPResource(uri=f"moe://runs/{r.run_id}/plots/{plot}", name=f"run {r.run_id} {plot}",
                                          description=f"{plot[:-4].replace('_', ' ')} plot of run {r.run_id}",
                                          mime_type="image/png"))  # fmt: skip
            listed.append(MCPResource(uri=f"moe://runs/{r.run_id}/summary", name=f"run {r.run_id}",
                                      description=f"summary.json of run {r.run_id} ({what})",
                                      mime_type="application/json"))  # fmt: skip
        for j in jobs.jobs:
            state = pb.JobState.Name(j.state)
            listed.append(MCPResource(uri=f"moe://jobs/{j.job_id}", name=f"job {j.job_id}",
                                      description=f"{pb.JobKind.Name(j.kind).lower()} job, {state}",
                                      mime_type="application/json"))  # fmt: skip
            if j.kind == pb.SWEEP:
                listed.append(MCPResource(uri=f"moe://sweeps/{j.job_id}/results", name=f"sweep {j.job_id} results",
                                          description=f"results table of sweep {j.run_id}, {state}",
                                          mime_type="application/json"))  # fmt: skip
        return listed


def register_resources(mcp: MCPServer, sidecar: Sidecar) -> None:
    """The ``moe://`` resources; a sidecar error is a resource error with the sidecar's message (in MCP
    words), and NOT_FOUND is the protocol's resource-not-found."""

    async def read(ctx: Context, uri: str, method: str, request: Any) -> Any:
        try:
            return await sidecar.call(method, request, token=caller_token())
        except SidecarError as e:
            message = f"{e.code}: {mcp_wording(e.message)}"
            raise (
                not_found(ctx, uri, message) if e.code == "NOT_FOUND" else ResourceError(message)
            ) from None

    async def run_file(ctx: Context, run_id: str, field: str, missing: str) -> str:
        """One file of a run (GetRun's ``field``), or a not-found error saying it does not exist yet."""
        uri = f"moe://runs/{run_id}/{field.split('_')[0]}"
        text = getattr(await read(ctx, uri, "GetRun", pb.GetRunRequest(run_id=run_id)), field)
        if not text:
            raise not_found(ctx, uri, f"run {run_id!r} has no {missing}")
        return text

    @mcp.resource("moe://jobs/{job_id}", mime_type="application/json", description="A job (JSON).")
    async def job_resource(job_id: str, ctx: Context) -> str:
        job = await read(ctx, f"moe://jobs/{job_id}", "GetJob", pb.GetJobRequest(job_id=job_id))
        return as_json(job_result(job))

    @mcp.resource(
        "moe://jobs/{job_id}/logs", mime_type="text/plain", description="The last 200 lines of a job's log."
    )
    async def job_logs_resource(job_id: str, ctx: Context) -> str:
        try:
            return (await log_page(sidecar, job_id, 200, -1)).text
        except ToolError as e:
            if str(e).startswith("NOT_FOUND"):
                raise not_found(ctx, f"moe://jobs/{job_id}/logs", str(e)) from None
            raise ResourceError(str(e)) from None

    @mcp.resource(
        "moe://jobs/{job_id}/metrics",
        mime_type="application/json",
        description="A job's latest metrics (JSON).",
    )
    async def job_metrics_resource(job_id: str, ctx: Context) -> str:
        job = await read(ctx, f"moe://jobs/{job_id}/metrics", "GetJob", pb.GetJobRequest(job_id=job_id))
        return as_json(dict(job.metrics))

    @mcp.resource(
        "moe://runs/{run_id}/config",
        mime_type="application/yaml",
        description="A run's composed Hydra config.",
    )
    async def run_config_resource(run_id: str, ctx: Context) -> str:
        return await run_file(ctx, run_id, "config_yaml", "composed config yet (its job has not started)")

    @mcp.resource(
        "moe://runs/{run_id}/summary", mime_type="application/json", description="A run's summary.json."
    )
    async def run_summary_resource(run_id: str, ctx: Context) -> str:
        return await run_file(
            ctx, run_id, "summary_json", "summary.json yet (it is written when training ends)"
        )

    @mcp.resource(
        "moe://runs/{run_id}/plots/{name}",
        mime_type="image/png",
        description="A run's plot as a PNG image (loss.png, expert_load.png; the run's summary lists them).",
    )
    async def run_plot_resource(run_id: str, name: str, ctx: Context) -> bytes:
        uri = f"moe://runs/{run_id}/plots/{name}"
        return (await read(ctx, uri, "GetRunPlot", pb.GetRunPlotRequest(run_id=run_id, name=name))).data

    @mcp.resource(
        "moe://bench/{job_id}/results", mime_type="application/json", description="A benchmark job's rows."
    )
    async def bench_results_resource(job_id: str, ctx: Context) -> str:
        uri = f"moe://bench/{job_id}/results"
        return as_json(
            benchmark_from_proto(await read(ctx, uri, "GetBenchmarkResults", pb.GetJobRequest(job_id=job_id)))
        )

    @mcp.resource(
        "moe://sweeps/{job_id}/results",
        mime_type="application/json",
        description="A sweep job's results table: per trial its swept overrides, objective value and status "
        "(also while it runs), the best trial, and the table as Markdown.",
    )
    async def sweep_results_resource(job_id: str, ctx: Context) -> str:
        uri = f"moe://sweeps/{job_id}/results"
        return as_json(
            sweep_from_proto(await read(ctx, uri, "GetSweepResults", pb.GetJobRequest(job_id=job_id)))
        )

    @mcp.resource(
        "moe://experiments/{name}", mime_type="application/yaml", description="An experiment's YAML."
    )
    async def experiment_resource(name: str, ctx: Context) -> str:
        uri = f"moe://experiments/{name}"
        resp = await read(ctx, uri, "ListExperiments", pb.ListExperimentsRequest())
        for e in resp.experiments:
            if e.name == name:
                return e.yaml
        names = ", ".join(e.name for e in resp.experiments)
        raise not_found(ctx, uri, f"no experiment {name!r}; choose from {names}")


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
                parts.append(f"(job {job_id}: {mcp_wording(e.message)})")
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
        return f"(run {run_id}: {e.code}: {mcp_wording(e.message)})"


def _describe_run(run: pb.RunInfo) -> str:
    return (
        f"Run {run.run_id} ({run.run_dir}), checkpoint: {run.checkpoint or '(none)'}\n"
        f"summary.json:\n{run.summary_json or '(none yet: written when training ends)'}\n"
        f"composed config:\n{run.config_yaml or '(none yet)'}"
    )
