"""Expert GEMMs in the autocast dtype (what Lightning's bf16-mixed needs), router and combine in fp32."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from moe_swarm.model import MoEConfig, MoELayer, RouterConfig
from moe_swarm.model.experts import grouped_mm_supported
from moe_swarm.model.grouped_mm import _grouped_mm_backward_op


class RecordGroupedMM(TorchDispatchMode):
    """Records the operand dtypes of every aten._grouped_mm call that reaches the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.dtype, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten._grouped_mm:
            self.calls.append((args[0].dtype, args[1].dtype))
        return func(*args, **(kwargs or {}))


def layer_fp32(e=8, k=2, d=64, d_ff=128, **router_kw) -> MoELayer:
    torch.manual_seed(0)
    return MoELayer(d, MoEConfig(num_experts=e, d_ff=d_ff, router=RouterConfig(top_k=k, **router_kw)))


def fwd_bwd(layer: MoELayer, x: torch.Tensor, autocast: bool):
    layer.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, aux = layer(xi)
        loss = (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + aux.load_balance_loss
    loss.backward()
    grads = {"x": xi.grad, **{n: p.grad for n, p in layer.named_parameters()}}
    return y, grads


@pytest.mark.parametrize("capacity_factor", [None, 1.0])
def test_bf16_autocast_reaches_grouped_mm_in_bf16_and_agrees_with_fp32(capacity_factor):
    layer = layer_fp32(capacity_factor=capacity_factor)
    x = torch.randn(2, 24, 64)
    ref_y, ref_g = fwd_bwd(layer, x, autocast=False)
    with RecordGroupedMM() as rec:
        y, g = fwd_bwd(layer, x, autocast=True)
    # 3 forward GEMMs (w1, w3, w2) and their backward GEMMs, all with bf16 operands.
    assert len(rec.calls) >= 3
    assert set(rec.calls) == {(torch.bfloat16, torch.bfloat16)}, rec.calls
    assert y.dtype == torch.float32  # the combine is fp32 and the output keeps the input's dtype
    scale = float(ref_y.abs().max())
    torch.testing.assert_close(y, ref_y, atol=2e-2 * scale, rtol=0)
    for name, ref in ref_g.items():
        assert g[name] is not None and g[name].dtype == torch.float32, name  # fp32 master grads
        torch.testing.assert_close(g[name], ref, atol=3e-2 * float(ref.abs().max()), rtol=0, msg=name)


def test_without_autocast_fp32_params_stay_fp32():
    layer = layer_fp32()
    with RecordGroupedMM() as rec:
        fwd_bwd(layer, torch.randn(2, 8, 64), autocast=False)
    assert rec.calls and set(rec.calls) == {(torch.float32, torch.float32)}


def test_router_logits_stay_fp32_under_autocast():
    layer = layer_fp32()
    x = torch.randn(16, 64)
    ref = layer.router(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer.router(x)
    assert out.logits.dtype == torch.float32 and out.weights.dtype == torch.float32
    torch.testing.assert_close(out.logits, ref.logits)
    assert torch.equal(out.indices, ref.indices)


def test_capability_probe_does_not_depend_on_autocast():
    grouped_mm_supported.cache_clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = grouped_mm_supported("cpu", torch.float32)
    grouped_mm_supported.cache_clear()
    assert first == grouped_mm_supported("cpu", torch.float32) is True
    grouped_mm_supported.cache_clear()


def test_autocast_dispatch_resolves_on_the_compute_dtype():
    layer = layer_fp32(d=60, d_ff=130)  # fp32 rows are 16-byte aligned only for even multiples of 4
    x = torch.randn(4, 60)
    assert layer.experts.resolve_dispatch(x) == "sorted_split"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.experts.resolve_dispatch(x) == "sorted_split"  # 130 * 2 bytes is not aligned either
    aligned = layer_fp32(d=64, d_ff=136)  # 136 * 2 bytes = 272, aligned in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert aligned.experts.resolve_dispatch(torch.randn(4, 64)) == "grouped_mm"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_custom_op_backward_matches_autograd(dtype):
    """The compile-safe op's hand-written backward equals autograd through F.grouped_mm."""
    torch.manual_seed(0)
    a = torch.randn(16, 32, dtype=dtype, requires_grad=True)
    b = torch.randn(4, 32, 24, dtype=dtype, requires_grad=True)
    offs = torch.tensor([4, 4, 12, 16], dtype=torch.int32)  # expert 1 has no rows
    out = torch.nn.functional.grouped_mm(a, b, offs=offs)
    grad = torch.randn_like(out)
    out.backward(grad)
    ga, gb = _grouped_mm_backward_op(a.detach(), b.detach(), offs, grad)
    torch.testing.assert_close(ga, a.grad)
    torch.testing.assert_close(gb, b.grad)
    assert gb[1].abs().max() == 0
