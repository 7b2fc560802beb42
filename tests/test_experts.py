import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_swarm.model import ExpertPool, MoEConfig, MoELayer, RouterConfig
from moe_swarm.model.experts import grouped_mm_supported

IMPLS = ["grouped_mm", "gather_bmm", "sorted_split"]


def moe_layer(d: int, d_ff: int, e: int, k: int, shared_expert_d_ff: int = 0, **router_kw) -> MoELayer:
    cfg = MoEConfig(
        num_experts=e,
        d_ff=d_ff,
        shared_expert_d_ff=shared_expert_d_ff,
        router=RouterConfig(top_k=k, **router_kw),
    )
    return MoELayer(d, cfg)


def run_layer(layer: MoELayer, x: torch.Tensor, impl: str, pad_mask=None):
    """Forward + backward through router and experts with a forced dispatch; returns output and grads."""
    layer.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_(True)
    b, t, d = xi.shape
    flat = xi.reshape(b * t, d)
    routed = layer.router(flat, None if pad_mask is None else pad_mask.reshape(-1))
    y = layer.experts(flat, routed.indices, routed.weights, routed.keep, impl=impl)
    (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    grads = {"x": xi.grad}
    grads.update({n: p.grad for n, p in layer.named_parameters()})
    return y.detach(), grads


def assert_agree(layer, x, atol, rtol, pad_mask=None):
    ref_y, ref_g = run_layer(layer, x, "reference_loop", pad_mask)
    for impl in IMPLS:
        y, g = run_layer(layer, x, impl, pad_mask)
        torch.testing.assert_close(y.float(), ref_y.float(), atol=atol, rtol=rtol, msg=f"{impl} output")
        for name, ref in ref_g.items():
            assert g[name] is not None, f"{impl}: no gradient for {name}"
            torch.testing.assert_close(
                g[name].float(), ref.float(), atol=atol, rtol=rtol, msg=f"{impl} grad {name}"
            )


def test_grouped_mm_is_available_here():
    assert grouped_mm_supported("cpu", torch.float32)


@pytest.mark.parametrize("e,k", [(8, 2), (4, 1), (4, 4), (16, 3)])
def test_dispatch_agrees_fp32(e, k):
    layer = moe_layer(16, 32, e, k)
    assert_agree(layer, torch.randn(2, 9, 16), atol=1e-5, rtol=1e-4)


def test_dispatch_agrees_bf16():
    layer = moe_layer(16, 32, 8, 2).to(torch.bfloat16)
    assert_agree(layer, torch.randn(2, 9, 16, dtype=torch.bfloat16), atol=3e-2, rtol=3e-2)


def test_single_token_and_empty_experts():
    layer = moe_layer(16, 32, 8, 2)  # one token: at least 6 experts are empty
    assert_agree(layer, torch.randn(1, 1, 16), atol=1e-5, rtol=1e-4)


def test_capacity_drops_and_padding_agree():
    layer = moe_layer(16, 32, 4, 2, capacity_factor=0.5)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    assert_agree(layer, torch.randn(2, 9, 16), atol=1e-5, rtol=1e-4, pad_mask=mask)


def test_every_expert_gets_a_gradient_even_without_tokens():
    layer = moe_layer(16, 32, 8, 1)
    y, _ = layer(torch.randn(1, 1, 16))
    y.sum().backward()
    assert layer.experts.w1.grad is not None and layer.experts.w1.grad.shape == (8, 16, 32)


def test_auto_dispatch_resolution_and_fallback_for_unaligned_sizes():
    aligned = ExpertPool(4, 64, 128)
    assert aligned.resolve_dispatch(torch.randn(512, 64)) == "grouped_mm"
    odd = ExpertPool(4, 60, 130)  # 2-byte aligned rows only: grouped_mm cannot take them
    assert odd.resolve_dispatch(torch.randn(512, 60)) == "sorted_split"
    forced = ExpertPool(4, 16, 32, dispatch="reference_loop")
    assert forced.resolve_dispatch(torch.randn(2, 16)) == "reference_loop"
    with pytest.raises(ValueError, match="dispatch"):
        ExpertPool(4, 16, 32, dispatch="magic")


def test_shared_expert_adds_dense_path():
    layer = moe_layer(16, 32, 4, 1, shared_expert_d_ff=24)
    x = torch.randn(1, 3, 16)
    y, _ = layer(x)
    flat = x.reshape(3, 16)
    r = layer.router(flat)
    expected = layer.experts(flat, r.indices, r.weights, r.keep) + layer.shared_expert(flat)
    torch.testing.assert_close(y.reshape(3, 16), expected)


@settings(max_examples=25, deadline=None)
@given(
    t=st.integers(1, 24),
    e=st.integers(1, 12),
    k_frac=st.floats(0.0, 1.0),
    d=st.sampled_from([4, 8, 12, 16]),
    d_ff=st.sampled_from([4, 8, 20]),
    seed=st.integers(0, 2**16),
)
def test_property_dispatch_agrees(t, e, k_frac, d, d_ff, seed):
    torch.manual_seed(seed)
    k = max(1, min(e, round(k_frac * e)))
    layer = moe_layer(d, d_ff, e, k)
    with torch.no_grad():
        layer.router.weight.normal_(std=2.0)  # peaky routing -> empty experts are common
    assert_agree(layer, torch.randn(1, t, d), atol=1e-5, rtol=1e-4)


def test_probe_made_under_no_grad_or_inference_mode_still_finds_grouped_mm():
    for ctx in (torch.no_grad, torch.inference_mode):
        grouped_mm_supported.cache_clear()
        with ctx():
            assert grouped_mm_supported("cpu", torch.float32)
    grouped_mm_supported.cache_clear()


def test_decode_path_without_aux_matches_training_path():
    layer = moe_layer(16, 32, 8, 2)
    x = torch.randn(2, 5, 16)
    y_aux, aux = layer(x)
    y_fast, none = layer(x, compute_aux=False)
    assert none is None and aux is not None
    torch.testing.assert_close(y_fast, y_aux)
