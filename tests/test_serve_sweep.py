"""A sweep as one job (issue 21): `moe-swarm-train -m` as a real child of a real sidecar on 127.0.0.1, its
results table over gRPC, MCP (tool and resource) and moe-swarm-ctl, and bad sweeps refused at submit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anyio
import grpc
import pytest
from conftest import TINY_MUL_BASE
from mcp import Client
from serve_helpers import local_settings

from moe_swarm.mcp.backend import Sidecar, SidecarConfig
from moe_swarm.mcp.server import build_server
from moe_swarm.serve.proto import mcp_pb2 as pb
from moe_swarm.serve.proto import mcp_pb2_grpc
from moe_swarm.serve.server import BackgroundServer

SKIP = (
    "experiment=",
    "run_id=",
    "model.moe.num_experts",
    "trainer.max_steps",
    "trainer.val_check_interval",
    "module.eval_problems",
)
FIXED = [o for o in TINY_MUL_BASE if not o.startswith(SKIP)] + [
    "trainer.max_steps=3", "trainer.val_check_interval=3", "module.eval_problems=2"]  # fmt: skip


@pytest.fixture
def sidecar(tmp_path):
    with BackgroundServer(local_settings(tmp_path / "state")) as srv:  # the real training command
        channel = grpc.insecure_channel(srv.address)
        yield srv, mcp_pb2_grpc.MCPControlStub(channel)
        channel.close()


def test_a_two_trial_sweep_runs_as_one_job_with_its_results_table(sidecar):
    srv, stub = sidecar
    request = pb.SweepRequest(config_path="reasoning_mul", params=["model.moe.num_experts=2,4"], overrides=FIXED,
                              sweep_id="sw")  # fmt: skip
    job = stub.StartSweep(request, timeout=120)
    assert job.kind == pb.SWEEP and job.run_id == "sw"
    final = None
    for event in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=600):
        final = event.job
    assert final.state == pb.SUCCEEDED, (final.message, list(final.log_tail))

    results = stub.GetSweepResults(pb.GetJobRequest(job_id=job.job_id), timeout=30)
    assert [t.run_id for t in results.trials] == ["sw-0", "sw-1"]
    assert [list(t.overrides) for t in results.trials] == [
        ["model.moe.num_experts=2"],
        ["model.moe.num_experts=4"],
    ]
    assert all(t.HasField("value") and t.metric == "val/em" and t.global_step == 3 for t in results.trials)
    assert results.mode == "max" and results.search == "grid"
    values = [t.value for t in results.trials]
    assert results.best == values.index(max(values))
    assert final.metrics["sweep/trials"] == 2 and final.checkpoint == results.trials[results.best].checkpoint
    assert "| 1 | sw-1 | model.moe.num_experts=4 |" in results.markdown

    async def over_mcp():
        async with Client(build_server(Sidecar(SidecarConfig(target=srv.address))), mode="auto") as c:
            tool = await c.call_tool("get_sweep_results", {"job_id": job.job_id})
            resource = await c.read_resource(f"moe://sweeps/{job.job_id}/results")
            listed = await c.list_resources()
            typo = await c.call_tool("start_sweep", {"experiment": "reasoning_mul",
                                                     "params": ["model.num_expert=2,4"]})  # fmt: skip
            return tool, resource, listed, typo

    tool, resource, listed, typo = anyio.run(over_mcp)
    assert tool.structured_content["best"] == results.best
    assert json.loads(resource.contents[0].text)["trials"][1]["value"] == pytest.approx(values[1])
    assert f"moe://sweeps/{job.job_id}/results" in {str(r.uri) for r in listed.resources}
    assert typo.is_error and "Did you mean model.moe.num_experts" in typo.content[0].text, typo.content[
        0
    ].text

    env = {**os.environ, "MOE_SWARM_TARGET": srv.address}
    env.pop("MOE_SWARM_TOKEN", None)
    ctl = subprocess.run([sys.executable, "-m", "moe_swarm.serve.ctl", "sweep-results", job.job_id],
                         capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert ctl.returncode == 0 and ctl.stdout == results.markdown, ctl.stderr


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (pb.SweepRequest(config_path="quickstart"), "a grid sweep needs params"),
        (pb.SweepRequest(config_path="quickstart", params=["trainer.max_steps=1,2"], trials=3), "trials is for"),
        (pb.SweepRequest(config_path="quickstart", params=["model.num_expert=2,4"]), "Did you mean"),
        (pb.SweepRequest(config_path="quickstart", params=["trainer.max_steps=range(1,40)"]), "list of values"),
        (pb.SweepRequest(config_path="quickstart", params=[f"trainer.max_steps={','.join(map(str, range(1, 20)))}"]),
         "serve.sweep.max_trials"),
        (pb.SweepRequest(config_path="quickstart", params=["hydra.job.name=a,b"]), "hydra"),
        (pb.SweepRequest(config_path="quickstart", params=["trainer.max_steps=1,2"], search="random"), "not a search"),
        (pb.SweepRequest(config_path="quickstart", params=["trainer.max_steps=1,2"],
                         overrides=["trainer.max_steps=5"]), "both fixed overrides and swept"),
    ],
)  # fmt: skip
def test_bad_sweeps_are_refused_at_submit_with_what_to_do(sidecar, request_, expected):
    _, stub = sidecar
    with pytest.raises(grpc.RpcError) as err:
        stub.StartSweep(request_, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in err.value.details(), err.value.details()
    assert not stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs  # no job was created
