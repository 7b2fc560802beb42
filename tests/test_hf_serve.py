"""An imported model with a BPE tokenizer.json in the swarm: the step swarm encodes and decodes through the
tokenizer, and a real sidecar on 127.0.0.1 answers RunInference with it (prompts and answers stay text)."""

from __future__ import annotations

import grpc
import pytest
import torch
from serve_helpers import local_settings
from test_hf_tokenizer import mixtral_folder

from moe_swarm.control.inference import AnswerUnit, InferParams
from moe_swarm.control.models import read_model
from moe_swarm.data import get_task
from moe_swarm.data.tokenizer import HFTokenizer
from moe_swarm.hf import import_hf
from moe_swarm.serve.proto import mcp_pb2 as pb
from moe_swarm.serve.proto import mcp_pb2_grpc
from moe_swarm.serve.server import BackgroundServer
from moe_swarm.swarm import StepSwarm, StepSwarmConfig

TASK = get_task("mul", digits_a=2, digits_b=1, scratchpad=True)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-serve")
    torch.manual_seed(0)
    folder = mixtral_folder(root / "hf")
    models = root / "models"
    models.mkdir()
    return import_hf(folder, models / "mixtral.ckpt")


def test_step_swarm_on_an_imported_model_goes_through_its_tokenizer(imported):
    loaded = read_model(imported, "m", "cpu")
    tok, model = loaded.tokenizer, loaded.model
    assert isinstance(tok, HFTokenizer) and tok.vocab_size > 256
    problems = TASK.generate("train", 2, seed=0)
    cfg = StepSwarmConfig(
        num_agents=4, wave_agents=4, commit_share=2.0, max_backtracks=0, max_step_tokens=6, max_steps=2
    )
    results = StepSwarm(model, cfg, tok, TASK).solve([p.prompt for p in problems])
    sep = tok.encode("\n")[0]
    checked = 0
    for p, r in zip(problems, results):
        for prop, prefix in zip(r.proposals, r.prefixes):
            assert prop.text == tok.decode([t for t in prop.tokens if t not in (tok.EOS, sep)])
            ids = tok.encode(p.prompt, bos=True) + [t for c in r.committed[: len(prefix)] for t in c.tokens]
            with torch.no_grad():
                logp = model(torch.tensor([ids + prop.tokens])).logits[0].float().log_softmax(-1)
            mean = sum(logp[len(ids) - 1 + i, t] for i, t in enumerate(prop.tokens)) / len(prop.tokens)
            assert prop.logprob == pytest.approx(float(mean), abs=1e-4)
            checked += 1
    assert checked >= 8


def test_sidecar_run_inference_answers_with_the_imported_tokenizer(imported, tmp_path):
    settings = local_settings(tmp_path / "state", inference__checkpoint_roots=[str(imported.parent)])
    prompt = "the quick brown"
    request = pb.InferRequest(
        prompt=prompt, model_id=str(imported), agents=2, rounds=0, temperature=0.7, seed=11, max_new_tokens=6
    )
    with BackgroundServer(settings) as srv:
        channel = grpc.insecure_channel(srv.address)
        r = mcp_pb2_grpc.MCPControlStub(channel).RunInference(request, timeout=120)
        channel.close()
    assert r.votes and r.forward_passes > 0
    # The same request solved in-process with the checkpoint's tokenizer gives the same text answer.
    loaded = read_model(imported, "m", "cpu")
    params = InferParams(max_new_tokens=6, agents=2, rounds=0, temperature=0.7)
    (outcome,) = AnswerUnit().solve(loaded, params, [prompt], [11])
    assert r.output == outcome.answer and r.output.strip()
    assert sorted(v.answer for v in r.votes) == sorted(outcome.votes)
