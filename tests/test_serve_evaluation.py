"""Evaluation as a job (issue 21): `moe-swarm-eval` on a trained checkpoint through the sidecar and MCP."""

from __future__ import annotations

import anyio
import grpc
import pytest
from serve_helpers import local_settings

from moe_swarm.mcp.backend import Sidecar, SidecarConfig
from moe_swarm.mcp.server import build_server
from moe_swarm.serve.proto import mcp_pb2 as pb
from moe_swarm.serve.proto import mcp_pb2_grpc
from moe_swarm.serve.server import BackgroundServer

TINY = ["model.d_model=32", "data.batch_size=4", "data.block_size=32", "trainer.limit_val_batches=1",
        "validate_before_fit=false", "trainer.max_steps=3", "trainer.val_check_interval=3"]  # fmt: skip


def test_a_checkpoint_is_evaluated_as_a_job_over_grpc_and_mcp(tmp_path):
    from mcp import Client

    with BackgroundServer(local_settings(tmp_path / "state", training__extra_overrides=TINY)) as srv:
        with grpc.insecure_channel(srv.address) as ch:
            stub = mcp_pb2_grpc.MCPControlStub(ch)
            train = stub.StartTraining(
                pb.TrainRequest(config_path="quickstart", run_id="to-eval"), timeout=60
            )
            trained = list(stub.WatchJob(pb.WatchJobRequest(job_id=train.job_id), timeout=300))[-1].job
            assert trained.state == pb.SUCCEEDED, trained.message
            with pytest.raises(grpc.RpcError) as bad:
                stub.StartEvaluation(pb.EvaluationRequest(checkpoint="to-eval", split="train"), timeout=30)
            assert (
                bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                and "'val' or 'test'" in bad.value.details()
            )
            job = stub.StartEvaluation(pb.EvaluationRequest(checkpoint="to-eval", max_batches=2), timeout=30)
            assert job.kind == pb.EVALUATION and job.checkpoint.endswith("to-eval/checkpoints/last.ckpt")
            done = list(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=300))[-1].job
            assert done.state == pb.SUCCEEDED, (done.message, list(done.log_tail))
            assert done.metrics["val/bpb"] > 0 and done.metrics["global_step"] == 3
            listed = stub.ListJobs(pb.ListJobsRequest(kind=pb.EVALUATION), timeout=10).jobs
            assert [j.job_id for j in listed] == [job.job_id]

        async def over_mcp():
            async with Client(build_server(Sidecar(SidecarConfig(target=srv.address))), mode="auto") as c:
                started = await c.call_tool("start_evaluation", {"checkpoint": train.job_id, "split": "test"})
                waited = await c.call_tool("wait_for_job", {"job_id": started.structured_content["job_id"],
                                                            "timeout_s": 300})  # fmt: skip
                return started, waited

        started, waited = anyio.run(over_mcp)
        assert not started.is_error, started.content
        job = waited.structured_content["job"]
        assert job["kind"] == "evaluation" and job["state"] == "FAILED"  # a text run has no test split
        assert "needs a reasoning-task run" in job["message"], job["message"]
