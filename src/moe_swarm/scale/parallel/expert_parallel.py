"""Expert parallelism: the expert pool split over an "ep" mesh, tokens moved to their experts by all-to-all.

torchtitan's pattern in plain torch.distributed. Each rank of the ep group holds ``E / ep`` experts
as ``Shard(0)`` DTensors (so checkpoints see them as one (E, ...) tensor and can reshard them).
Forward on every rank: sort its (token, expert) assignments by expert, exchange per-expert counts
(no gradient), send the rows to the ranks owning their experts (``all_to_all_single_autograd``),
run the local experts as one grouped GEMM (the model's own ``ExpertPool`` code), send the results
back, un-sort and weight. Backward is the same trip in reverse, through autograd.

Gradient scale: an expert's local gradient sums over the tokens of all ``ep`` ranks, while FSDP2
averages it over only ``world / ep`` ranks; a small autograd function divides it by ``ep`` inside the
forward (a hook on the DTensor parameter would be lost when Lightning moves the module).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.func import functional_call

from moe_swarm.model.experts import ExpertPool, combine, compute_dtype, sort_by_expert

__all__ = ["ExpertParallelPool", "scale_grad"]

EXPERT_WEIGHTS = ("w1", "w2", "w3")


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged forward, gradient times ``scale`` backward (no-op for scale 1)."""
    return x if scale == 1.0 else _ScaleGrad.apply(x, scale)


class ExpertParallelPool(nn.Module):
    """Drop-in replacement of an :class:`ExpertPool` whose experts are split over ``ep_mesh``.

    Same parameter names and global shapes (``w1``, ``w3``: (E, d_model, d_ff); ``w2``: (E, d_ff,
    d_model)), so state-dict keys do not change. Called collectively: every rank of the ep group must
    run each forward (and backward), also with no tokens of its own.
    """

    def __init__(self, pool: ExpertPool, ep_mesh: DeviceMesh) -> None:
        super().__init__()
        ep = ep_mesh.size()
        if pool.num_experts % ep:
            raise ValueError(f"num_experts={pool.num_experts} is not divisible by the ep group size {ep}")
        self.num_experts = pool.num_experts
        self.d_model = pool.d_model
        self.d_ff = pool.d_ff
        self.dispatch = pool.dispatch
        self.ep_mesh = ep_mesh
        self.ep_size = ep
        self.local_experts = pool.num_experts // ep
        for name in EXPERT_WEIGHTS:
            weight = getattr(pool, name).detach()
            setattr(self, name, nn.Parameter(distribute_tensor(weight, ep_mesh, [Shard(0)])))
        # The local grouped GEMM is the model's own code: a weightless ExpertPool of the local size,
        # called with this rank's shards. Kept in a tuple so it is not registered as a submodule.
        with torch.device("meta"):
            local = ExpertPool(self.local_experts, self.d_model, self.d_ff, dispatch=self.dispatch)
        self._local_pool = (local,)

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, local_experts={self.local_experts}, ep_size={self.ep_size}, "
            f"d_model={self.d_model}, d_ff={self.d_ff}"
        )

    def _local_weights(self) -> dict[str, Tensor]:
        out = {}
        for name in EXPERT_WEIGHTS:
            w = getattr(self, name)
            w = w.to_local() if isinstance(w, DTensor) else w
            out[name] = scale_grad(w, 1.0 / self.ep_size)
        return out

    def forward(
        self, x: Tensor, indices: Tensor, weights: Tensor, keep: Tensor | None = None, impl: str | None = None
    ) -> Tensor:
        """Same contract as :meth:`ExpertPool.forward`: ``x`` (N, d); ``indices``/``weights``/``keep`` (N, k)."""
        n, k = indices.shape
        e, ep, el = self.num_experts, self.ep_size, self.local_experts
        group = self.ep_mesh.get_group()
        # Skipped assignments (padding, capacity drops) sort last and are not sent.
        order, counts = sort_by_expert(indices, keep, e)
        send_counts = counts[:e].contiguous()
        sent = order[: int(send_counts.sum())]  # assignments that go to an expert, grouped by expert
        # Rows travel in the experts' compute dtype (bf16 under bf16 autocast: half the bytes).
        xs = x.to(compute_dtype(x))[sent // k]

        # Per-expert counts first (no gradient): rank j receives, from each source, counts of its experts.
        recv_counts = torch.empty_like(send_counts)
        with torch.no_grad():
            dist.all_to_all_single(recv_counts, send_counts, group=group)
        in_splits = send_counts.view(ep, el).sum(1).tolist()  # host sync: all_to_all needs sizes
        out_splits = recv_counts.view(ep, el).sum(1).tolist()
        received = all_to_all_single_autograd(xs, out_splits, in_splits, group)

        # Rows arrive grouped by (source rank, local expert); the local pool regroups them by expert.
        local_ids = torch.arange(el, device=x.device).repeat(ep).repeat_interleave(recv_counts)
        local_w = self._local_weights()
        if received.shape[0] > 0:
            ones = torch.ones(received.shape[0], 1, dtype=torch.float32, device=x.device)
            ys = functional_call(
                self._local_pool[0], local_w, (received, local_ids[:, None], ones), {"impl": impl}
            )
        else:  # nothing to compute here; keep the weights in the graph so every rank gets a (zero) gradient
            ys = received + 0.0 * sum(w.sum() for w in local_w.values()).to(received.dtype)
        back = all_to_all_single_autograd(ys, in_splits, out_splits, group)

        rows = x.new_zeros(n * k, self.d_model, dtype=back.dtype).index_copy(0, sent, back)
        return combine(rows.view(n, k, -1), weights).to(x.dtype)
