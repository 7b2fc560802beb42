"""Fine-grained and shared experts: granularity g folds into E*g experts, top-k*g, d_ff/g (g=1 is
today's layer), a fine-grained layer split from a coarse one computes the same function, and n shared
experts equal the sum of n hand-computed SwiGLUs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moe_swarm.hf.families import config_from_hf, config_to_hf
from moe_swarm.model.config import MoEConfig, RouterConfig, TransformerConfig
from moe_swarm.model.moe import MoELayer
from moe_swarm.model.router import balance_loss
from moe_swarm.model.transformer import MoETransformer

D = 16


def test_granularity_folds_into_experts_top_k_and_width_and_round_trips():
    cfg = MoEConfig(num_experts=4, d_ff=64, granularity=4, router=RouterConfig(top_k=2))
    assert (cfg.num_experts, cfg.router.top_k, cfg.d_ff, cfg.granularity) == (16, 8, 16, 1)
    model = TransformerConfig(d_model=D, n_heads=2, moe=cfg)
    again = TransformerConfig.from_dict(model.to_dict())
    assert again == model  # folding once: to_dict -> from_dict is the identity
    coarse = TransformerConfig(d_model=D, n_heads=2, moe=MoEConfig(num_experts=4, d_ff=64))
    assert model.resolved_dense_d_ff == coarse.resolved_dense_d_ff == 128  # equal active width
    fine_pc, coarse_pc = MoETransformer(model).count_parameters(), MoETransformer(coarse).count_parameters()
    routers = (16 - 4) * D * model.n_layers  # the fine router has more rows
    assert fine_pc.total - coarse_pc.total == routers
    assert fine_pc.active - coarse_pc.active == routers


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(d_ff=10, granularity=4), "divisible"),
        (dict(granularity=0), "granularity"),
        (dict(num_shared_experts=0, shared_expert_d_ff=8), "num_shared_experts"),
        (dict(num_shared_experts=0, shared_expert_gate=True), "shared_expert_gate"),
    ],
)
def test_bad_granularity_and_shared_settings_fail_with_their_names(bad, match):
    with pytest.raises(ValueError, match=match):
        MoEConfig(**bad)


def test_granularity_one_is_todays_layer_bit_for_bit():
    """Same seed -> same weights and the same output as a layer built without the new keys (a copy)."""
    x = torch.randn(3, 5, D)
    torch.manual_seed(0)
    today = MoELayer(D, MoEConfig(num_experts=4, d_ff=32, router=RouterConfig(top_k=2)))
    torch.manual_seed(0)
    g1 = MoELayer(D, MoEConfig(num_experts=4, d_ff=32, granularity=1, num_shared_experts=0))
    assert today.cfg == g1.cfg
    for (n1, p1), (n2, p2) in zip(today.state_dict().items(), g1.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    y1, a1 = today(x)
    y2, a2 = g1(x)
    assert torch.equal(y1, y2) and torch.equal(a1.load_balance_loss, a2.load_balance_loss)
    # The balance loss is still Switch's E * sum f_i P_i with f over this batch's routed assignments.
    r = today.router(x.reshape(-1, D))
    f = (
        torch.zeros(4).scatter_add_(0, r.indices.reshape(-1), torch.ones(r.indices.numel()))
        / r.indices.numel()
    )
    p = r.logits.softmax(-1).mean(0)
    torch.testing.assert_close(r.load_balance_loss, 4 * (f * p).sum(), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        balance_loss(r.routed_counts, r.mean_probs), r.load_balance_loss, atol=0, rtol=0
    )


def _split_from_coarse(coarse: MoELayer, g: int) -> MoELayer:
    """A fine-grained layer holding ``coarse`` split in g: router rows repeated, hidden units sliced.

    Each copy of a router row gets 1/g of the coarse combine weight (renormalised over k*g slots), so
    the pieces' output projections are scaled by g; the g pieces of an expert then sum to it."""
    c = coarse.cfg
    fine = MoELayer(D, MoEConfig(num_experts=c.num_experts, d_ff=c.d_ff, granularity=g, router=c.router))
    e, f = c.num_experts, c.d_ff // g
    with torch.no_grad():
        fine.router.weight.copy_(coarse.router.weight.repeat_interleave(g, dim=0))
        # expert e, piece j = hidden units [j*f, (j+1)*f) of coarse expert e
        fine.experts.w1.copy_(coarse.experts.w1.reshape(e, D, g, f).permute(0, 2, 1, 3).reshape(e * g, D, f))
        fine.experts.w3.copy_(coarse.experts.w3.reshape(e, D, g, f).permute(0, 2, 1, 3).reshape(e * g, D, f))
        fine.experts.w2.copy_(coarse.experts.w2.reshape(e * g, f, D) * g)
    return fine


@pytest.mark.parametrize("mode", ["softmax_topk", "sigmoid_bias"])
@pytest.mark.parametrize("dispatch", ["grouped_mm", "sorted_split", "reference_loop", "gather_bmm"])
def test_fine_grained_layer_split_from_a_coarse_one_computes_the_same_function(mode, dispatch):
    """Each of the g copies of a router row gets p/g (softmax) or the same score (sigmoid), top-k*g
    takes all copies of the top-k experts, and renormalised weights give back the coarse combine."""
    torch.manual_seed(1)
    coarse = MoELayer(
        D, MoEConfig(num_experts=4, d_ff=32, dispatch=dispatch, router=RouterConfig(mode=mode, top_k=2))
    )
    fine = _split_from_coarse(coarse, 4)
    assert fine.experts.num_experts == 16 and fine.router.cfg.top_k == 8 and fine.experts.d_ff == 8
    x = torch.randn(2, 7, D)
    with torch.set_grad_enabled(dispatch != "gather_bmm"):
        torch.testing.assert_close(fine(x)[0], coarse(x)[0], atol=1e-5, rtol=1e-4)


def test_shared_experts_equal_the_sum_of_hand_computed_swiglus():
    torch.manual_seed(2)
    cfg = MoEConfig(num_experts=4, d_ff=8, num_shared_experts=3, router=RouterConfig(top_k=2))
    assert cfg.shared_expert_d_ff == 8 and cfg.shared_d_ff == 24  # 0 -> as wide as a routed expert
    layer = MoELayer(D, cfg)
    x = torch.randn(2, 5, D)
    flat = x.reshape(-1, D)
    r = layer.router(flat)
    routed = layer.experts(flat, r.indices, r.weights, r.keep, impl="reference_loop")
    se = layer.shared_expert
    by_hand = torch.zeros_like(flat)
    for j in range(3):
        rows = slice(8 * j, 8 * (j + 1))
        h = F.silu(flat @ se.w1.weight[rows].T) * (flat @ se.w3.weight[rows].T)
        by_hand += h @ se.w2.weight[:, rows].T
    torch.testing.assert_close(layer(x)[0].reshape(-1, D), routed + by_hand, atol=1e-6, rtol=1e-5)
    dense = TransformerConfig(d_model=D, n_heads=2, moe=cfg).dense_equivalent()
    assert dense.resolved_dense_d_ff == 2 * 8 + 24  # equal active width: top-k routed + shared


def test_qwen2_moe_config_maps_n_shared_experts_to_one_of_width_n_times_d():
    cfg = TransformerConfig(
        d_model=D,
        n_heads=2,
        qkv_bias=True,
        moe=MoEConfig(
            num_experts=4, d_ff=8, num_shared_experts=2, shared_expert_d_ff=6, shared_expert_gate=True
        ),
    )
    hf = config_to_hf(cfg, "qwen2_moe", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
    assert hf["shared_expert_intermediate_size"] == 12
    back = config_from_hf(hf)
    assert back.moe.num_shared_experts == 1 and back.moe.shared_expert_d_ff == 12
    # Same tensors either way: one SwiGLU of width 12 under the same parameter names.
    assert {k: v.shape for k, v in MoETransformer(back).state_dict().items()} == {
        k: v.shape for k, v in MoETransformer(cfg).state_dict().items()
    }


@pytest.mark.slow
def test_fine_grained_layer_with_shared_experts_compiles_to_the_same_numbers():
    """torch.compile (inductor, CPU) of a g=2 layer with 2 shared experts: eager's outputs and gradients."""
    torch.manual_seed(3)
    cfg = MoEConfig(num_experts=4, d_ff=32, granularity=2, num_shared_experts=2, dispatch="grouped_mm")
    eager = MoELayer(D, cfg)
    compiled = MoELayer(D, cfg)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    x = torch.randn(2, 6, D)
    outs = []
    for layer in (eager, compiled):
        y, aux = layer(x)
        (y.square().sum() + aux.load_balance_loss).backward()
        outs.append((y.detach(), {n: p.grad for n, p in layer.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-4)
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][name], grad, atol=1e-5, rtol=1e-4)
