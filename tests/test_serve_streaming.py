"""Streamed tokens and chat messages (issue 21, issue 19): StreamInference on a real sidecar on 127.0.0.1,
the same checks as RunInference, chats rendered with an imported model's chat template, `moe-swarm-ctl
infer --stream`, and MCP run_inference streaming its text as progress notifications."""

from __future__ import annotations

import os
import subprocess
import sys

import anyio
import grpc
import pytest
import torch
from mcp import Client
from serve_helpers import local_settings, tiny_checkpoint

from moe_swarm.cli.generate import stream_generate
from moe_swarm.control.models import read_model
from moe_swarm.mcp.backend import Sidecar, SidecarConfig
from moe_swarm.mcp.server import build_server
from moe_swarm.serve.proto import mcp_pb2 as pb
from moe_swarm.serve.proto import mcp_pb2_grpc
from moe_swarm.serve.server import BackgroundServer

CHAT = [pb.ChatMessage(role="user", content="the quick")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A byte-tokenizer checkpoint and an imported Mixtral with a tokenizer.json and a chat template."""
    pytest.importorskip("transformers")
    from test_hf_tokenizer import mixtral_folder

    from moe_swarm.hf import import_hf

    root = tmp_path_factory.mktemp("stream-models")
    byte = tiny_checkpoint(root / "models" / "byte.ckpt", seed=1)
    torch.manual_seed(0)
    chat = import_hf(mixtral_folder(root / "hf"), root / "models" / "chat.ckpt")
    return byte, chat


@pytest.fixture(scope="module")
def sidecar(models, tmp_path_factory):
    state = tmp_path_factory.mktemp("stream-state")
    settings = local_settings(state, inference__checkpoint_roots=[str(models[0].parent)])
    settings.inference.defaults.temperature = 0.0
    with BackgroundServer(settings) as srv:
        channel = grpc.insecure_channel(srv.address)
        yield srv, mcp_pb2_grpc.MCPControlStub(channel)
        channel.close()


def _expected(path, prompt: str, n: int, temperature: float = 0.0, seed: int = 0) -> str:
    loaded = read_model(path, "m", "cpu")
    return stream_generate(loaded.model, loaded.tokenizer, prompt, lambda *_: None, max_new_tokens=n,
                           temperature=temperature, seed=seed)[0]  # fmt: skip


def test_stream_inference_sends_the_text_as_it_is_decoded_and_ends_with_the_answer(models, sidecar):
    _, stub = sidecar
    request = pb.InferRequest(prompt="The list", model_id=str(models[0]), max_new_tokens=24, temperature=0.8,
                              seed=7)  # fmt: skip
    chunks = list(stub.StreamInference(request, timeout=120))
    *pieces, last = chunks
    assert len(pieces) > 1 and not any(c.HasField("final") for c in pieces) and last.HasField("final")
    text = "".join(c.text for c in chunks)
    assert text == _expected(models[0], "The list", 24, 0.8, 7)
    tokens = [c.tokens for c in chunks]
    assert tokens == sorted(tokens) and 0 < last.tokens <= 24
    assert last.final.output == text.strip() and last.final.agents == 1 and last.final.model_id


def test_stream_inference_checks_a_request_as_run_inference_does(models, sidecar):
    srv, stub = sidecar
    model = str(models[0])
    shared = [
        pb.InferRequest(prompt=""),
        pb.InferRequest(prompt="x" * 2049, model_id=model),
        pb.InferRequest(prompt="x", model_id=model, max_new_tokens=10_000),
        pb.InferRequest(prompt="x" * 90, model_id=model, max_new_tokens=10),  # over the model's context
        pb.InferRequest(prompt="x", model_id="no-such-model"),
        pb.InferRequest(prompt="x", model_id=model, temperature=-1),
        pb.InferRequest(prompt="x", model_id=model, messages=CHAT),  # both
        pb.InferRequest(model_id=model, messages=CHAT),  # a byte model has no chat template
    ]
    for request in shared:
        with pytest.raises(grpc.RpcError) as unary:
            stub.RunInference(request, timeout=60)
        with pytest.raises(grpc.RpcError) as streamed:
            list(stub.StreamInference(request, timeout=60))
        assert (streamed.value.code(), streamed.value.details()) == (
            unary.value.code(),
            unary.value.details(),
        )
        assert unary.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert "has no chat template" in unary.value.details() and "plain prompt" in unary.value.details()
    with pytest.raises(grpc.RpcError) as swarm:
        list(stub.StreamInference(pb.InferRequest(prompt="x", model_id=model, agents=4), timeout=60))
    assert (
        swarm.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "without streaming (RunInference)" in swarm.value.details()
    )


def test_chat_messages_are_rendered_with_the_models_chat_template(models, sidecar):
    _, stub = sidecar
    chat = str(models[1])
    expected = _expected(models[1], "<|user|>the quick\n", 8)
    streamed = list(stub.StreamInference(pb.InferRequest(model_id=chat, messages=CHAT, max_new_tokens=8)))
    assert "".join(c.text for c in streamed) == expected and expected.strip()
    answered = stub.RunInference(pb.InferRequest(model_id=chat, messages=CHAT, max_new_tokens=8, agents=2,
                                                 rounds=0, temperature=0.7, seed=3), timeout=120)  # fmt: skip
    as_text = stub.RunInference(pb.InferRequest(model_id=chat, prompt="<|user|>the quick\n", max_new_tokens=8,
                                                agents=2, rounds=0, temperature=0.7, seed=3), timeout=120)  # fmt: skip
    assert answered.output == as_text.output and list(answered.votes) == list(as_text.votes)


def test_ctl_streams_and_mcp_sends_the_text_as_progress_notifications(models, sidecar):
    srv, _ = sidecar
    model = str(models[0])
    expected = _expected(models[0], "The list", 16)
    env = {**os.environ, "MOE_SWARM_TARGET": srv.address}
    env.pop("MOE_SWARM_TOKEN", None)
    done = subprocess.run([sys.executable, "-m", "moe_swarm.serve.ctl", "infer", "The list", "--stream", "--model",
                           model, "--max-new-tokens", "16"], capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected + "\n" and "tokens streamed (one agent)" in done.stderr

    async def go():
        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(p, total, message):
            progress.append((p, total, message))

        async with Client(build_server(Sidecar(SidecarConfig(target=srv.address))), mode="legacy") as c:
            args = {"prompt": "The list", "model": model, "max_new_tokens": 16, "stream": True}
            result = await c.call_tool("run_inference", args, progress_callback=on_progress)
            refused = await c.call_tool("run_inference", {**args, "agents": 3})
            chat = await c.call_tool("run_inference", {"model": str(models[1]), "max_new_tokens": 8, "agents": 1,
                                                       "temperature": 0, "messages": [{"role": "user", "content": "the quick"}]})  # fmt: skip
            return progress, result, refused, chat

    progress, result, refused, chat = anyio.run(go)
    assert chat.structured_content["answer"] == _expected(models[1], "<|user|>the quick\n", 8).strip()
    assert not result.is_error, result.content
    assert result.structured_content["answer"] == expected.strip()
    assert progress and progress[-1][2] == expected and progress[-1][1] == 16.0
    assert all(expected.startswith(m) for _, _, m in progress)  # each message: the text so far
    assert [p for p, _, _ in progress] == sorted({p for p, _, _ in progress})  # progress only increases
    assert refused.is_error and "agents=3" in refused.content[0].text
