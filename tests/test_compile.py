"""torch.compile of the model on CPU: no graph breaks in a block, same numbers as eager, and training
with ``module.compile=true`` (also the flagship GPU experiment, shrunk, on CPU with bf16-mixed)."""

import json

import pytest
import torch
import torch._dynamo
from conftest import TINY_MODEL, run_entry_point

from moe_swarm.model import MoEConfig, MoETransformer, TransformerConfig
from moe_swarm.store.checkpoint import load_checkpoint

SHORT_RUN = [
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=1",
    "validate_before_fit=false",
    "data.block_size=32",
    "data.batch_size=2",
    "model.max_seq_len=32",
]


def tiny_model(**moe) -> MoETransformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(
        d_model=32, n_layers=2, n_heads=2, max_seq_len=32, moe=MoEConfig(num_experts=4, d_ff=32, **moe)
    )
    return MoETransformer(cfg)


def block_inputs(model: MoETransformer, t: int = 16):
    x = torch.randn(2, t, model.cfg.d_model)
    return x, model.rope_cos[:t][None, None], model.rope_sin[:t][None, None]


@pytest.mark.parametrize("autocast", [False, True])
def test_a_moe_block_traces_without_graph_breaks(autocast):
    """One graph per block: no host sync (.item()/.tolist()) and no untraceable op in the MoE path."""
    model = tiny_model()
    x, cos, sin = block_inputs(model)
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        explained = torch._dynamo.explain(model.blocks[0])(x, cos, sin, None, None, None, True)
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("capacity_factor", [None, 1.0])
def test_compiled_blocks_match_eager_forward_and_backward(capacity_factor):
    from moe_swarm.model import RouterConfig

    eager = tiny_model(router=RouterConfig(capacity_factor=capacity_factor))
    compiled = tiny_model(router=RouterConfig(capacity_factor=capacity_factor))
    compiled.load_state_dict(eager.state_dict())
    for block in compiled.blocks:
        block.compile()
    idx = torch.randint(0, 256, (2, 24))
    results = []
    for model in (eager, compiled):
        out = model(idx, idx)
        (out.loss + 0.01 * out.load_balance_loss).backward()
        results.append((out.logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-4)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    torch._dynamo.reset()


def _summary(runs_dir, run_id: str) -> dict:
    return json.loads((runs_dir / run_id / "summary.json").read_text())


@pytest.mark.slow
def test_training_with_module_compile_on_cpu(tmp_path):
    proc = run_entry_point(
        "moe_swarm.cli.train",
        ["experiment=quickstart", *TINY_MODEL, *SHORT_RUN, "module.compile=true", "run_id=compiled"],
        tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "compiled" / "checkpoints" / "last.ckpt").is_file()
    assert _summary(tmp_path, "compiled")["global_step"] == 3


@pytest.mark.slow
def test_gpu_h100_experiment_runs_shrunk_on_cpu_with_compile_and_bf16_mixed(tmp_path):
    """The same code path as on the H200 (compile + bf16-mixed, the gpu_h100 recipe) at a tiny size."""
    proc = run_entry_point(
        "moe_swarm.cli.train",
        [
            "experiment=gpu_h100",
            "trainer.accelerator=cpu",
            *TINY_MODEL,
            *SHORT_RUN,
            "data.max_bytes=200000",
            "data.num_workers=0",
            "run_id=h100tiny",
        ],
        tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _summary(tmp_path, "h100tiny")
    assert summary["global_step"] == 3
    loaded = load_checkpoint(tmp_path / "h100tiny" / "checkpoints" / "last.ckpt")
    assert loaded.hparams["compile"] is True
    assert loaded.run_config["trainer"]["precision"] == "bf16-mixed"
