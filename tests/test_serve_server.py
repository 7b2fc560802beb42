"""The real server on 127.0.0.1: seed wire compatibility, auth, TLS, bad input, inference, observability."""

import json
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serve_helpers import local_settings, tiny_checkpoint

from moe_swarm.serve.proto import mcp_pb2 as pb
from moe_swarm.serve.proto import mcp_pb2_grpc
from moe_swarm.serve.server import BackgroundServer

CHILD = Path(__file__).with_name("serve_child_train.py")

# Section 4 of the seed design note, verbatim: a client generated from this text must work unchanged.
SEED_PROTO = """\
// proto/mcp.proto
syntax = "proto3";
package mcp;

service MCPControl {
  rpc StartTraining(TrainRequest) returns (TrainResponse);
  rpc RunBenchmark(BenchmarkRequest) returns (BenchmarkResponse);
  rpc RunInference(InferRequest) returns (InferResponse);
}

message TrainRequest {
  string config_path = 1;
}
message TrainResponse {
  bool success = 1;
  string log = 2;
}

message BenchmarkRequest {
  int32 num_samples = 1;
}
message BenchmarkResponse {
  repeated BenchmarkResult results = 1;
}

message InferRequest {
  string prompt = 1;
}
message InferResponse {
  string output = 1;
}

message BenchmarkResult {
  string metric = 1;
  double value = 2;
}
"""


def make_settings(tmp_path, **changes):
    models = tmp_path / "models"
    ckpt = tiny_checkpoint(models / "tiny.ckpt", seed=1)
    configs = tmp_path / "configs"
    configs.mkdir(exist_ok=True)
    base = dict(
        training__command=["python", str(CHILD)],
        training__config_name=None,
        training__extra_overrides=[],
        training__config_roots=[str(configs)],
        inference__checkpoint_roots=[str(models)],
        inference__default_model=str(ckpt),
        benchmark__suites=["moe_layer"],
    )
    base.update(changes)
    return local_settings(tmp_path / "state", **base)


class Conn:
    def __init__(self, address, credentials=None, metadata=()):
        self.channel = (
            grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
        )
        self.stub = mcp_pb2_grpc.MCPControlStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.md = tuple(metadata)

    def serving(self):
        return (
            self.health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            == health_pb2.HealthCheckResponse.SERVING
        )


@pytest.fixture
def server(tmp_path):
    with BackgroundServer(make_settings(tmp_path)) as srv:
        conn = Conn(srv.address)
        srv.conn = conn
        yield srv
        conn.channel.close()


# ----------------------------------------------------------------------------- seed compatibility
def test_client_generated_from_the_seed_proto_trains_benchmarks_and_infers(tmp_path):
    """Only the seed's three RPCs: real (tiny) training, a benchmark, then inference with the trained model."""
    gen = tmp_path / "seedgen"
    gen.mkdir()
    (gen / "mcp.proto").write_text(SEED_PROTO)
    from grpc_tools import protoc

    assert (
        protoc.main(
            ["protoc", f"-I{gen}", f"--python_out={gen}", f"--grpc_python_out={gen}", str(gen / "mcp.proto")]
        )
        == 0
    )
    tiny_training = ["model.d_model=32", "data.batch_size=4", "data.block_size=32", "trainer.limit_val_batches=1",
                     "validate_before_fit=false", "trainer.max_steps=2", "trainer.val_check_interval=2",
                     "trainer.enable_progress_bar=false"]  # fmt: skip
    settings = local_settings(tmp_path / "state", training__extra_overrides=tiny_training,
                              benchmark__suites=["moe_layer"])  # fmt: skip
    with BackgroundServer(settings) as srv, grpc.insecure_channel(srv.address) as ch:
        # A separate process: the seed's descriptors clash (by design: same names) with ours in one pool.
        script = gen / "client.py"
        script.write_text(
            textwrap.dedent(f"""
            import json, sys, time
            sys.path.insert(0, {str(gen)!r})
            import grpc, mcp_pb2, mcp_pb2_grpc
            stub = mcp_pb2_grpc.MCPControlStub(grpc.insecure_channel({srv.address!r}))
            t = stub.StartTraining(mcp_pb2.TrainRequest(config_path="quickstart"), timeout=30)
            b = stub.RunBenchmark(mcp_pb2.BenchmarkRequest(num_samples=1), timeout=300)
            waits = 0
            while True:  # a seed-only client cannot watch the job: it retries until a model exists
                try:
                    i = stub.RunInference(mcp_pb2.InferRequest(prompt="The "), timeout=120)
                    break
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.FAILED_PRECONDITION or waits >= 600:
                        raise
                    waits += 1
                    time.sleep(0.5)
            print(json.dumps({{"success": t.success, "log": t.log,
                              "results": [[r.metric, r.value] for r in b.results], "output": i.output,
                              "module": mcp_pb2.__file__}}))
        """)
        )
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["module"].startswith(str(gen))  # really the seed's generated code
        assert out["success"] is True and "started" in out["log"]
        job_id = out["log"].split()[1]
        stub = mcp_pb2_grpc.MCPControlStub(ch)
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)
        assert job.config_path == "quickstart" and job.state == pb.SUCCEEDED and job.checkpoint
        assert out["results"] and all(isinstance(v, float) and v > 0 for _, v in out["results"])
        assert any(m.startswith("moe_layer/") for m, _ in out["results"])
        assert isinstance(out["output"], str)
        assert stub.ListModels(pb.ListModelsRequest(), timeout=10).default_model_id == job_id


# ----------------------------------------------------------------------------- bad input
def _infer(**kw):
    return lambda s: s.RunInference(pb.InferRequest(**kw), timeout=60)


def _train(config="quickstart", overrides=(), **kw):
    return lambda s: s.StartTraining(
        pb.TrainRequest(config_path=config, overrides=list(overrides), **kw), timeout=30
    )


def _load(checkpoint, **kw):
    return lambda s: s.LoadModel(pb.LoadModelRequest(checkpoint=checkpoint, **kw), timeout=30)


C = grpc.StatusCode
BAD_REQUESTS = [
    ("train: path traversal", _train("../../etc/passwd.yaml"), C.INVALID_ARGUMENT, "traversal"),
    ("train: unknown experiment", _train("no_such_experiment"), C.NOT_FOUND, "available"),
    ("train: file outside roots", _train("/etc/hosts.yaml"), C.PERMISSION_DENIED, "outside"),
    ("train: _target_", _train(overrides=["callbacks.x._target_=os.system"]), C.INVALID_ARGUMENT, "_target_"),
    ("train: hydra", _train(overrides=["hydra.run.dir=/tmp"]), C.INVALID_ARGUMENT, "hydra"),
    ("train: new key", _train(overrides=["+evil=1"]), C.INVALID_ARGUMENT, "allowlist"),
    ("train: path value", _train(overrides=["data.bin_path=/etc/shadow"]), C.PERMISSION_DENIED, "data roots"),
    ("train: bad run id", _train(run_id="../up"), C.INVALID_ARGUMENT, "run_id"),
    ("infer: empty prompt", _infer(prompt=""), C.INVALID_ARGUMENT, "empty"),
    ("infer: long prompt", _infer(prompt="x" * 3000), C.INVALID_ARGUMENT, "limit is 2048"),
    ("infer: prompt over context", _infer(prompt="x" * 200), C.INVALID_ARGUMENT, "max_seq_len"),
    (
        "infer: max_new_tokens",
        _infer(prompt="1+1=", max_new_tokens=100000),
        C.INVALID_ARGUMENT,
        "max_new_tokens",
    ),
    ("infer: agents", _infer(prompt="1+1=", agents=100000), C.INVALID_ARGUMENT, "agents"),
    ("infer: rounds", _infer(prompt="1+1=", rounds=99), C.INVALID_ARGUMENT, "rounds"),
    ("infer: temperature", _infer(prompt="1+1=", temperature=-1.0), C.INVALID_ARGUMENT, "temperature"),
    (
        "infer: nan temperature",
        _infer(prompt="1+1=", temperature=float("nan")),
        C.INVALID_ARGUMENT,
        "temperature",
    ),
    ("infer: seed", _infer(prompt="1+1=", seed=-5), C.INVALID_ARGUMENT, "seed"),
    (
        "infer: model traversal",
        _infer(prompt="1+1=", model_id="../../etc/x.ckpt"),
        C.INVALID_ARGUMENT,
        "traversal",
    ),
    ("infer: model outside", _infer(prompt="1+1=", model_id="/etc/x.ckpt"), C.PERMISSION_DENIED, "outside"),
    ("infer: unknown model", _infer(prompt="1+1=", model_id="nope"), C.NOT_FOUND, "ListModels"),
    (
        "bench: negative",
        lambda s: s.RunBenchmark(pb.BenchmarkRequest(num_samples=-1), timeout=30),
        C.INVALID_ARGUMENT,
        "negative",
    ),
    (
        "bench: too many",
        lambda s: s.RunBenchmark(pb.BenchmarkRequest(num_samples=10**6), timeout=30),
        C.INVALID_ARGUMENT,
        "limit",
    ),
    (
        "bench: suite",
        lambda s: s.RunBenchmark(pb.BenchmarkRequest(suites=["nope"]), timeout=30),
        C.INVALID_ARGUMENT,
        "choose from",
    ),
    ("load: empty", _load(""), C.INVALID_ARGUMENT, "empty"),
    ("load: not a checkpoint", _load("/etc/passwd"), C.INVALID_ARGUMENT, ".ckpt"),
    ("load: outside", _load("/tmp/../etc/x.ckpt"), C.INVALID_ARGUMENT, "traversal"),
    ("load: outside root", _load("/etc/x.ckpt"), C.PERMISSION_DENIED, "outside"),
    ("load: missing", _load("missing.ckpt"), C.NOT_FOUND, "does not exist"),
    ("load: bad id", _load("tiny.ckpt", model_id="a/b"), C.INVALID_ARGUMENT, "model_id"),
    (
        "job: unknown",
        lambda s: s.GetJob(pb.GetJobRequest(job_id="nope"), timeout=10),
        C.NOT_FOUND,
        "ListJobs",
    ),
    (
        "list: negative limit",
        lambda s: s.ListJobs(pb.ListJobsRequest(limit=-1), timeout=10),
        C.INVALID_ARGUMENT,
        "limit",
    ),
    ("message too large", _infer(prompt="x" * (5 * 1024 * 1024)), C.RESOURCE_EXHAUSTED, ""),
]


@pytest.mark.parametrize(("name", "call", "code", "hint"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_the_right_status_and_the_server_keeps_serving(server, name, call, code, hint):
    with pytest.raises(grpc.RpcError) as info:
        call(server.conn.stub)
    assert info.value.code() == code, f"{name}: {info.value.code()} {info.value.details()}"
    assert hint.lower() in (info.value.details() or "").lower(), info.value.details()
    assert server.conn.serving()
    assert server.conn.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).version


def test_failed_precondition_for_a_job_without_checkpoint(server, tmp_path):
    job = server.conn.stub.StartTraining(
        pb.TrainRequest(config_path="quickstart", overrides=["fake.steps=1", "fake.crash_at=1"]), timeout=30
    )
    list(server.conn.stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=60))
    with pytest.raises(grpc.RpcError) as info:
        server.conn.stub.LoadModel(pb.LoadModelRequest(checkpoint=job.job_id), timeout=30)
    assert info.value.code() == C.FAILED_PRECONDITION and "no checkpoint" in info.value.details()
    assert server.conn.serving()


# ----------------------------------------------------------------------------- inference
def test_inference_answers_with_votes_and_compute(server):
    r = server.conn.stub.RunInference(pb.InferRequest(prompt="12*34=", max_new_tokens=5, agents=4, rounds=1,
                                                      temperature=0.8, seed=3), timeout=60)  # fmt: skip
    assert r.model_id == "tiny" and r.agents == 4 and r.batch_size == 1
    assert 1 <= r.rounds_used <= 2 and r.forward_passes > 0 and r.generated_tokens > 0 and r.flops > 0
    assert 0 < r.vote_share <= 1 and r.votes and r.output == r.votes[0].answer
    assert sum(v.weight for v in r.votes) > 0
    again = server.conn.stub.RunInference(pb.InferRequest(prompt="12*34=", max_new_tokens=5, agents=4, rounds=1,
                                                          temperature=0.8, seed=3), timeout=60)  # fmt: skip
    assert (again.output, again.vote_share) == (r.output, r.vote_share)  # seeded: reproducible


def test_load_and_list_models(server, tmp_path):
    other = tiny_checkpoint(tmp_path / "models" / "other.ckpt", seed=7, d_model=64, n_heads=4)
    info = server.conn.stub.LoadModel(
        pb.LoadModelRequest(checkpoint=str(other), model_id="big", make_default=True), timeout=60
    )
    assert info.model_id == "big" and info.params_total > 0 and info.is_default and info.max_seq_len == 96
    listed = server.conn.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert listed.default_model_id == "big" and [m.model_id for m in listed.models] == ["big"]
    r = server.conn.stub.RunInference(pb.InferRequest(prompt="1+1=", max_new_tokens=3, agents=2), timeout=60)
    assert r.model_id == "big"
    r = server.conn.stub.RunInference(
        pb.InferRequest(prompt="1+1=", max_new_tokens=3, agents=2, model_id="tiny.ckpt"), timeout=60
    )
    assert r.model_id == "tiny"


def test_models_say_their_task_and_prompt_format_and_refuse_prompts_that_do_not_fit(server, tmp_path):
    mul = tiny_checkpoint(tmp_path / "models" / "mul.ckpt", seed=2,
                          task={"name": "mul", "kwargs": {"digits_a": 3, "digits_b": 2}})  # fmt: skip
    info = server.conn.stub.LoadModel(pb.LoadModelRequest(checkpoint=str(mul), model_id="mul"), timeout=60)
    assert (
        info.task == "mul"
        and "digits reversed" in info.prompt_format
        and "'321*54=' asks 123*45" in info.prompt_format
    )
    text = server.conn.stub.RunInference(pb.InferRequest(prompt="The list type", max_new_tokens=4, agents=2),
                                         timeout=60)  # fmt: skip
    assert text.model_id == "tiny" and text.forward_passes > 0  # a text model continues any text
    listed = {m.model_id: m for m in server.conn.stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert listed["tiny"].task == "" and listed["tiny"].prompt_format.startswith("text model: any text")
    assert listed["mul"].example_prompt and listed["mul"].max_seq_len == 96
    served = {
        m.model_id: m for m in server.conn.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).models
    }
    assert served["mul"].prompt_format == info.prompt_format
    ok = server.conn.stub.RunInference(pb.InferRequest(prompt=listed["mul"].example_prompt, model_id="mul",
                                                       max_new_tokens=4, agents=2), timeout=60)  # fmt: skip
    assert ok.model_id == "mul"
    for bad in ("123*45", "What is 123 times 45?", "1234*5="):
        with pytest.raises(grpc.RpcError) as err:
            server.conn.stub.RunInference(pb.InferRequest(prompt=bad, model_id="mul", agents=2), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "trained on task 'mul'" in err.value.details() and "digits reversed" in err.value.details()
    assert server.conn.serving()


def test_override_typos_are_refused_at_submit_and_take_no_slot(tmp_path):
    """Overrides are composed (Hydra compose API) and validated before a job exists."""
    settings = make_settings(tmp_path, training__config_name="train")
    with BackgroundServer(settings) as srv:
        conn = Conn(srv.address)
        cases = {
            "trainer.max_stepz=5": "Could not override 'trainer.max_stepz'",
            "data=no_such_data": "Could not find 'data/no_such_data'",
            "trainer.max_steps=abc": "trainer.max_steps='abc': must be an integer >= 1",
            "model.n_layers=0": "model.n_layers=0: must be an integer >= 1",
        }
        for override, expected in cases.items():
            with pytest.raises(grpc.RpcError) as err:
                conn.stub.StartTraining(
                    pb.TrainRequest(config_path="quickstart", overrides=[override]), timeout=60
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, override
            assert expected in err.value.details(), err.value.details()
            assert "HYDRA_FULL_ERROR" not in err.value.details()
        assert not conn.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs  # nothing took the slot
        good = conn.stub.StartTraining(pb.TrainRequest(config_path="quickstart", overrides=["trainer.max_steps=3"]),
                                       timeout=60)  # fmt: skip
        assert good.success
        conn.channel.close()


def test_experiments_runs_and_benchmark_results_are_served(server):
    exps = {
        e.name: e
        for e in server.conn.stub.ListExperiments(pb.ListExperimentsRequest(), timeout=10).experiments
    }
    assert {"quickstart", "reasoning_mul"} <= set(exps)
    assert exps["quickstart"].description and "trainer:" in exps["quickstart"].yaml
    assert not exps["quickstart"].description.startswith("@package")
    job = server.conn.stub.StartTraining(pb.TrainRequest(config_path="quickstart", overrides=["fake.steps=2"],
                                                         run_id="run-a"), timeout=30)  # fmt: skip
    wait_done = list(server.conn.stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=120))[-1].job
    assert wait_done.state == pb.SUCCEEDED, wait_done.message
    for ref in ("run-a", job.job_id):
        run = server.conn.stub.GetRun(pb.GetRunRequest(run_id=ref), timeout=10)
        assert run.run_id == "run-a" and list(run.job_ids) == [job.job_id]
        assert run.checkpoint.endswith("last.ckpt") and json.loads(run.summary_json)["run_id"] == "run-a"
    for ref, code in (
        ("no-such-run", grpc.StatusCode.NOT_FOUND),
        ("../etc", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as err:
            server.conn.stub.GetRun(pb.GetRunRequest(run_id=ref), timeout=10)
        assert err.value.code() == code
    with pytest.raises(grpc.RpcError) as err:
        server.conn.stub.GetBenchmarkResults(pb.GetJobRequest(job_id=job.job_id), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "training job" in err.value.details()


def _many(address, prompts, **kw):
    with grpc.insecure_channel(address) as ch:
        stub = mcp_pb2_grpc.MCPControlStub(ch)
        with ThreadPoolExecutor(len(prompts)) as pool:
            futures = [
                pool.submit(stub.RunInference, pb.InferRequest(prompt=p, **kw), timeout=300) for p in prompts
            ]
            return [f.result() for f in futures]


def test_32_concurrent_inference_calls_are_batched_and_match_unbatched_answers(tmp_path):
    prompts = [f"{i}*{i + 3}=" for i in range(32)]
    kw = dict(max_new_tokens=4, agents=4, rounds=0, temperature=0.7, seed=11)
    batched_settings = make_settings(tmp_path, inference__batching__max_delay_ms=200.0)
    with BackgroundServer(batched_settings) as srv:
        batched = _many(srv.address, prompts, **kw)
    assert len(batched) == 32 and all(r.output is not None and r.forward_passes > 0 for r in batched)
    assert max(r.batch_size for r in batched) > 1, "concurrent requests should share a batched forward"
    assert all(r.batch_size <= 32 for r in batched)
    unbatched_settings = make_settings(tmp_path, inference__batching__enabled=False)
    with BackgroundServer(unbatched_settings) as srv:
        single = _many(srv.address, prompts, **kw)
    assert all(r.batch_size == 1 for r in single)
    # agents are seeded per prompt, rows decode independently: batching does not change answers
    assert [r.output for r in batched] == [r.output for r in single]


# ----------------------------------------------------------------------------- auth and TLS
def test_auth_on_requires_a_valid_bearer_token(tmp_path, monkeypatch):
    token = "s3cret-token-0123456789abcdef"
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# tokens\n{token}\n")
    monkeypatch.setenv("MOE_SWARM_TOKENS", "another-token-0123456789abcdef")
    settings = make_settings(tmp_path, auth__enabled=True, auth__token_file=str(token_file))
    with BackgroundServer(settings) as srv:
        for md, ok in [((), False), ((("authorization", "Bearer wrong"),), False),
                       ((("authorization", token),), False), ((("authorization", f"Bearer {token}"),), True),
                       ((("authorization", "Bearer another-token-0123456789abcdef"),), True)]:  # fmt: skip
            conn = Conn(srv.address)
            assert conn.serving()  # health is exempt
            try:
                if ok:
                    assert conn.stub.GetServerInfo(
                        pb.GetServerInfoRequest(), metadata=md, timeout=10
                    ).auth_enabled
                    assert conn.stub.ListJobs(pb.ListJobsRequest(), metadata=md, timeout=10) is not None
                else:
                    calls = (
                        lambda c, m: c.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=m, timeout=10),
                        lambda c, m: list(
                            c.stub.TailLogs(pb.TailLogsRequest(job_id="x"), metadata=m, timeout=10)
                        ),
                    )
                    for call in calls:
                        with pytest.raises(grpc.RpcError) as info:
                            call(conn, md)
                        assert (
                            info.value.code() == C.UNAUTHENTICATED and "token" in info.value.details().lower()
                        )
            finally:
                conn.channel.close()
        # the server never hands its tokens to a child
        env = srv.running.jobs.child_env({})
        assert "MOE_SWARM_TOKENS" not in env


def test_scoped_tokens_are_limited_to_their_scopes(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_SWARM_TOKENS", "reader-token-0123456789abcdef:read,full-token-0123456789abcdef")
    settings = make_settings(tmp_path, auth__enabled=True)
    with BackgroundServer(settings) as srv:
        conn = Conn(srv.address)
        reader = (("authorization", "Bearer reader-token-0123456789abcdef"),)
        full = (("authorization", "Bearer full-token-0123456789abcdef"),)
        info = conn.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=reader, timeout=10)
        assert list(info.caller_scopes) == ["read"]
        assert list(conn.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=full, timeout=10).caller_scopes) == [
            "read", "train", "infer"]  # fmt: skip
        assert conn.stub.ListExperiments(pb.ListExperimentsRequest(), metadata=reader, timeout=10).experiments
        for call, scope in [
            (lambda m: conn.stub.StartTraining(pb.TrainRequest(config_path="quickstart"), metadata=m, timeout=10), "train"),
            (lambda m: conn.stub.RunInference(pb.InferRequest(prompt="x"), metadata=m, timeout=10), "infer"),
        ]:  # fmt: skip
            with pytest.raises(grpc.RpcError) as err:
                call(reader)
            assert (
                err.value.code() == C.PERMISSION_DENIED
                and f"needs the '{scope}' scope" in err.value.details()
            )
        assert conn.stub.RunInference(pb.InferRequest(prompt="x", max_new_tokens=2, agents=2), metadata=full,
                                      timeout=60).output is not None  # fmt: skip
        conn.channel.close()
    monkeypatch.setenv("MOE_SWARM_TOKENS", "bad-scope-token-0123456789abcdef:admin")
    with (
        pytest.raises(ValueError, match="unknown scope"),
        BackgroundServer(make_settings(tmp_path / "b", auth__enabled=True)),
    ):
        pass


def test_auth_off_accepts_calls_without_token(server):
    info = server.conn.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    assert not info.auth_enabled


def test_auth_on_without_tokens_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.delenv("MOE_SWARM_TOKENS", raising=False)
    with pytest.raises(ValueError, match="no token is configured"):
        BackgroundServer(make_settings(tmp_path, auth__enabled=True)).start()


@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate"
)
def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    with BackgroundServer(make_settings(tmp_path, tls__cert=str(cert), tls__key=str(key))) as srv:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        conn = Conn(f"localhost:{srv.port}".replace("localhost", "127.0.0.1"), credentials=creds)
        assert conn.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).tls_enabled
        conn.channel.close()
        plain = Conn(srv.address)
        with pytest.raises(grpc.RpcError) as info:
            plain.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=5)
        assert info.value.code() == C.UNAVAILABLE
        plain.channel.close()


# ----------------------------------------------------------------------------- observability
def test_server_info_rpc_stats_prometheus_and_log_lines(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="moe_swarm.serve.rpc")
    with BackgroundServer(make_settings(tmp_path, metrics_port=0)) as srv:
        conn = Conn(srv.address)
        conn.stub.RunInference(pb.InferRequest(prompt="1+1=", max_new_tokens=2, agents=2), timeout=60)
        with pytest.raises(grpc.RpcError):
            conn.stub.GetJob(pb.GetJobRequest(job_id="nope"), timeout=10)
        info = conn.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        stats = {s.method: s for s in info.rpc_stats}
        infer = stats["/mcp.MCPControl/RunInference"]
        assert infer.requests == 1 and infer.errors == 0 and infer.p50_ms > 0 and infer.p99_ms >= infer.p50_ms
        get = stats["/mcp.MCPControl/GetJob"]
        assert get.errors == 1 and get.codes["NOT_FOUND"] == 1
        assert info.torch_version and info.device == "cpu" and [m.model_id for m in info.models] == ["tiny"]
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{srv.running.metrics_port}/metrics", timeout=10)
            .read()
            .decode()
        )
        assert 'moe_swarm_rpc_requests_total{code="NOT_FOUND",method="/mcp.MCPControl/GetJob"} 1.0' in text
        assert 'moe_swarm_rpc_latency_seconds_count{method="/mcp.MCPControl/RunInference"} 1.0' in text
        assert "moe_swarm_inference_batch_size_count 1.0" in text
        conn.channel.close()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "moe_swarm.serve.rpc"]
    by_rpc = {ln["rpc"]: ln for ln in lines}
    assert by_rpc["/mcp.MCPControl/GetJob"]["code"] == "NOT_FOUND"
    assert by_rpc["/mcp.MCPControl/GetJob"]["job_id"] == "nope"
    assert by_rpc["/mcp.MCPControl/RunInference"]["model_id"] == "tiny"
    assert all({"rpc", "code", "latency_ms", "peer"} <= set(ln) for ln in lines)


def test_reflection_lists_the_services(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    db = ProtoReflectionDescriptorDatabase(server.conn.channel)
    services = set(db.get_services())
    assert {"mcp.MCPControl", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    fd = db.FindFileContainingSymbol("mcp.MCPControl")
    assert fd.package == "mcp" and "RunInference" in [m.name for m in fd.service[0].method]


def test_a_sharded_last_ckpt_folder_is_served_by_run_id_and_path(server, tmp_path):
    """trainer=model_parallel leaves last.ckpt as a DCP folder: the sidecar loads it like a file."""
    import torch

    from moe_swarm.model import MoETransformer, TransformerConfig
    from moe_swarm.store.sharded import save_sharded

    cfg = TransformerConfig.from_dict({"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 64,
                                       "moe": {"num_experts": 4, "d_ff": 32}})  # fmt: skip
    torch.manual_seed(0)
    model = MoETransformer(cfg)
    folder = tmp_path / "state" / "runs" / "sharded-run" / "checkpoints" / "last.ckpt"
    save_sharded(folder, model, meta={"hyper_parameters": {"model": cfg.to_dict()}, "global_step": 3})
    assert folder.is_dir()
    r = server.conn.stub.RunInference(
        pb.InferRequest(prompt="ab", max_new_tokens=3, agents=2, model_id="sharded-run"), timeout=60
    )
    assert r.model_id == "sharded-run" and r.generated_tokens > 0
    info = server.conn.stub.LoadModel(
        pb.LoadModelRequest(checkpoint=str(folder), model_id="folder"), timeout=60
    )
    assert info.params_total == model.count_parameters().total and info.global_step == 3
