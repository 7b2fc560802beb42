import math

import pytest
import torch

from moe_swarm.model import RouterConfig
from moe_swarm.model.router import Router, RoutingControl, expected_capacity


def make_router(e=8, k=2, d=16, **kw) -> Router:
    r = Router(d, e, RouterConfig(top_k=k, **kw))
    torch.nn.init.normal_(r.weight, std=1.0)
    return r


@pytest.mark.parametrize("mode", ["softmax_topk", "sigmoid_bias"])
def test_shapes_distinct_indices_and_raw_logits(mode):
    r = make_router(mode=mode)
    x = torch.randn(30, 16)
    out = r(x)
    assert out.logits.shape == (30, 8) and out.indices.shape == (30, 2) and out.weights.shape == (30, 2)
    assert torch.allclose(out.logits, x @ r.weight.t(), atol=1e-5), "logits must be raw x @ W^T"
    assert (out.indices[:, 0] != out.indices[:, 1]).all()
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(30))


def test_softmax_weights_without_renorm_are_the_probabilities():
    r = make_router(renormalize=False)
    x = torch.randn(10, 16)
    out = r(x)
    probs = out.logits.softmax(-1)
    torch.testing.assert_close(out.weights, probs.gather(1, out.indices))
    assert (out.weights.sum(-1) < 1).all()


def test_k1_is_argmax():
    r = make_router(k=1)
    x = torch.randn(50, 16)
    out = r(x)
    assert torch.equal(out.indices[:, 0], out.logits.argmax(-1))
    torch.testing.assert_close(out.weights, torch.ones(50, 1))


def test_k_equals_e_uses_every_expert():
    r = make_router(e=4, k=4)
    out = r(torch.randn(5, 16))
    assert torch.equal(out.indices.sort(-1).values, torch.arange(4).expand(5, 4))


def test_sigmoid_bias_selection_and_weights():
    r = make_router(mode="sigmoid_bias", route_scale=2.5)
    x = torch.randn(20, 16)
    # A huge bias on expert 3 makes it always chosen, but its weight comes from the unbiased score.
    r.bias[3] = 100.0
    out = r(x)
    assert (out.indices == 3).any(-1).all()
    scores = torch.sigmoid(out.logits)
    picked = scores.gather(1, out.indices)
    torch.testing.assert_close(out.weights, 2.5 * picked / picked.sum(-1, keepdim=True))


def test_bias_update_moves_skewed_load_toward_balance():
    torch.manual_seed(1)
    r = Router(16, 8, RouterConfig(top_k=2, mode="sigmoid_bias"))
    with torch.no_grad():
        r.weight.normal_(std=0.5)
        r.weight[0] += 2.0  # skew: expert 0 wins for most tokens
    x = torch.randn(512, 16) + 1.0
    first = r(x).load_max_over_mean.item()
    for _ in range(300):
        r.update_bias(r(x).counts, gamma=0.01)
    last = r(x).load_max_over_mean.item()
    assert first > 2.0
    assert last < first * 0.6, (first, last)


def test_capacity_drops_overflow_and_counts_it():
    e, k, n = 4, 1, 8
    r = Router(4, e, RouterConfig(top_k=k, capacity_factor=1.0))
    with torch.no_grad():
        r.weight.copy_(torch.eye(4) * 10)
    x = torch.zeros(n, 4)
    x[:, 0] = 1.0  # every token prefers expert 0
    cap = expected_capacity(1.0, n, k, e)
    assert cap == 2
    out = r(x)
    assert out.keep[:, 0].sum().item() == cap
    assert torch.equal(out.keep[:, 0], torch.tensor([True, True] + [False] * 6)), "earlier tokens win"
    assert out.dropped_frac.item() == pytest.approx(6 / 8)
    assert out.counts.tolist() == [2.0, 0.0, 0.0, 0.0]
    assert (out.weights[~out.keep] == 0).all()


def test_capacity_second_choices_yield_to_first_choices():
    r = Router(4, 4, RouterConfig(top_k=2, capacity_factor=0.5))  # capacity = ceil(0.5*4*2/4) = 1
    with torch.no_grad():
        r.weight.copy_(torch.eye(4) * 10)
    x = torch.tensor([[1.0, 0.5, 0, 0], [0.5, 1.0, 0, 0], [0, 0, 1.0, 0.5], [0, 0, 0.5, 1.0]])
    out = r(x)
    # First choices are 0,1,2,3 (one each): all kept; every second choice overflows.
    assert out.keep[:, 0].all() and not out.keep[:, 1].any()


def test_padding_is_excluded_from_losses_and_stats():
    r = make_router()
    x = torch.randn(12, 16)
    mask = torch.tensor([True] * 7 + [False] * 5)
    full = r(x, pad_mask=mask)
    only = r(x[:7])
    torch.testing.assert_close(full.load_balance_loss, only.load_balance_loss)
    torch.testing.assert_close(full.z_loss, only.z_loss)
    torch.testing.assert_close(full.counts, only.counts)
    torch.testing.assert_close(full.entropy, only.entropy)
    assert not full.keep[7:].any() and (full.weights[7:] == 0).all()


def test_load_balance_and_z_loss_hand_computed():
    r = Router(2, 2, RouterConfig(top_k=1))
    with torch.no_grad():
        r.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # logits equal x
    out = r(x)
    # choices: 0, 1, 0 -> f = (2/3, 1/3); P = mean softmax rows
    p = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]).softmax(-1).mean(0)
    f = torch.tensor([2 / 3, 1 / 3])
    assert out.load_balance_loss.item() == pytest.approx(2 * (f * p).sum().item(), rel=1e-6)
    lse = [math.log(math.exp(2) + 1), math.log(1 + math.e), math.log(math.e + 1)]
    assert out.z_loss.item() == pytest.approx(sum(v * v for v in lse) / 3, rel=1e-6)


def test_uniform_routing_gives_the_documented_minimum_of_one():
    r = Router(4, 4, RouterConfig(top_k=2))
    with torch.no_grad():
        r.weight.zero_()  # uniform probabilities
    # With zero logits top-k ties; construct f uniform via 4 tokens whose top-2 sets cover experts evenly.
    out = r(torch.zeros(8, 4))
    p = out.logits.softmax(-1).mean(0)
    assert torch.allclose(p, torch.full((4,), 0.25))
    f = torch.bincount(out.indices.reshape(-1), minlength=4).float() / 16
    assert out.load_balance_loss.item() == pytest.approx(4 * (f * p).sum().item())
    # E * sum(f * 1/E) = sum f = 1 whatever f is when P is uniform: the minimum value.
    assert out.load_balance_loss.item() == pytest.approx(1.0)


def test_load_balance_gradient_flows_to_router():
    r = make_router()
    out = r(torch.randn(16, 16))
    out.load_balance_loss.backward()
    assert r.weight.grad is not None and r.weight.grad.abs().sum() > 0


def test_control_keeps_top1_and_perturbs_tail():
    r = make_router(e=16, k=4)
    x = torch.randn(64, 16)
    base = r(x)
    n = x.shape[0]
    ctl = RoutingControl(noise_scale=torch.full((n,), 5.0), seed=torch.arange(n), position=torch.zeros(n))
    noisy = r(x, control=ctl)
    assert torch.equal(noisy.indices[:, 0], base.logits.argmax(-1)), "top-1 must never be perturbed"
    assert not torch.equal(noisy.indices[:, 1:].sort(-1).values, base.indices[:, 1:].sort(-1).values)
    zero = RoutingControl(noise_scale=torch.zeros(n), seed=torch.arange(n), position=torch.zeros(n))
    assert torch.equal(r(x, control=zero).indices.sort(-1).values, base.indices.sort(-1).values)


def test_control_top_k_override_per_token():
    r = make_router(e=8, k=2)
    n = 6
    ctl = RoutingControl(
        torch.zeros(n),
        torch.zeros(n, dtype=torch.long),
        position=torch.zeros(n, dtype=torch.long),
        top_k=torch.tensor([1, 2, 3, 4, 1, 2]),
    )
    out = r(torch.randn(n, 16), control=ctl)
    assert out.indices.shape == (n, 4)
    assert out.keep.sum(-1).tolist() == [1, 2, 3, 4, 1, 2]
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(n))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="top_k"):
        Router(4, 4, RouterConfig(top_k=5))
    with pytest.raises(ValueError, match="mode"):
        Router(4, 4, RouterConfig(top_k=1, mode="hash"))
    with pytest.raises(ValueError, match="capacity_factor"):
        Router(4, 4, RouterConfig(top_k=1, capacity_factor=0))
