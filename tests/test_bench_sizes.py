"""The model-sized moe_layer cases (run at the three model shapes with --device cuda), exercised
here on CPU at a tiny shape with the same code path: bf16 params, bf16-mixed, dense floor, peers."""

import pytest
import torch

from moe_swarm.bench import peers
from moe_swarm.bench.context import BenchContext
from moe_swarm.bench.moe_sizes import GPU_SHAPES, SizedShape, layer_flops, sized_case
from moe_swarm.bench.results import EnvInfo
from moe_swarm.model import MoEConfig, MoELayer, RouterConfig

TINY = SizedShape(4, 2, 32, 64, name="tiny")


def ctx() -> BenchContext:
    env = EnvInfo.collect(torch.device("cpu"), threads=1)
    return BenchContext(quick=True, repeats=1, threads=1, device=torch.device("cpu"), env=env)


def test_gpu_shapes_are_the_issue_shapes_and_flops_count_fwd_and_bwd():
    assert [(s.num_experts, s.top_k, s.d_model, s.d_ff) for s in GPU_SHAPES] == [
        (8, 2, 4096, 14336),
        (64, 8, 2048, 1024),
        (128, 8, 2048, 768),
    ]
    # 3 GEMMs x 2 FLOPs x (T*k rows) x d x ff forward, twice that backward.
    assert layer_flops(TINY, 10) == 3 * 3 * 2 * 10 * 2 * 32 * 64


def test_bf16_and_bf16_mixed_cases_with_floor_and_ratios_run_on_cpu():
    c = ctx()
    rows = sized_case(c, TINY, 64, ("bf16", "bf16_mixed"), with_peers=False)
    by = {r.metric.split("/", 2)[2]: r for r in rows}
    for name in ("ours_bf16", "ours_bf16_mixed", "floor_bf16"):
        assert by[f"{name}_ms"].value > 0 and by[f"{name}_tflops"].value > 0
    assert by["mixed_over_bf16"].unit == "x" and by["mixed_over_bf16"].value > 0
    assert {"ours_bf16_over_floor", "ours_bf16_mixed_over_floor"} <= set(by)
    assert not c.problems


def test_hf_peer_is_built_on_our_weights_and_agrees_for_every_backend():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    layer = MoELayer(32, MoEConfig(num_experts=4, d_ff=64, router=RouterConfig(top_k=2)))
    x = torch.randn(1, 20, 32)
    ours = layer(x)[0]
    for backend in peers.HF_BACKENDS:
        torch.testing.assert_close(peers.hf_mixtral_block(layer, backend)(x), ours, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="softmax top-k"):
        peers.hf_mixtral_block(MoELayer(32, MoEConfig(router=RouterConfig(mode="sigmoid_bias"))), "eager")


def test_peer_rows_and_a_disagreeing_peer_is_reported_not_timed(monkeypatch):
    pytest.importorskip("transformers")
    c = ctx()
    rows = sized_case(c, TINY, 64, ("fp32", "bf16"))
    names = {r.metric.split("/", 2)[2] for r in rows}
    for p in ("fp32", "bf16"):  # bf16: compared on the tokens both route alike (HF's logits are bf16)
        assert {f"hf_{b}_{p}_ms" for b in peers.HF_BACKENDS} <= names
        assert f"hf_best_over_ours_{p}" in names
    assert not c.problems

    real = peers.hf_mixtral_block

    def wrong(layer, backend):
        block = real(layer, backend)
        with torch.no_grad():
            block.experts.down_proj.mul_(1.5)
        return block

    monkeypatch.setattr(peers, "hf_mixtral_block", wrong)
    c = ctx()
    rows = sized_case(c, TINY, 64, ("fp32",))
    assert not any("/hf_" in r.metric for r in rows)
    assert {p["status"] for p in c.problems} == {"failed"} and len(c.problems) == len(peers.HF_BACKENDS)


@pytest.mark.slow
def test_train_step_eager_vs_compiled_with_mfu_runs_on_cpu():
    """The CUDA train_step path (gpu_h100 model, eager vs per-block compile, MFU), at a tiny size."""
    from moe_swarm.bench.train_step import GPU, QUICK, eager_vs_compiled

    assert (GPU.d_model, GPU.n_layers, GPU.num_experts, GPU.top_k, GPU.d_ff) == (1024, 12, 16, 2, 1024)
    rows = eager_vs_compiled(ctx(), QUICK)
    by = {r.metric.split("/", 2)[2]: r for r in rows}
    for name in ("eager", "compiled"):
        assert by[f"{name}_ms"].value > 0 and 0 < by[f"{name}_mfu"].value < 1
    assert by["compiled_speedup"].unit == "x" and by["matmul_peak_gflops"].value > 0
