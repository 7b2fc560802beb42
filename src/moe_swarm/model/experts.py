"""ExpertPool: E SwiGLU experts as stacked weights, and the token dispatch/combine around them.

Weights are stacked ``(E, ...)`` tensors, never a list of modules: this allows grouped matmuls,
sharding on dim 0, and every expert receives a gradient each step (no DDP unused parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_swarm.model.config import DISPATCH_IMPLS
from moe_swarm.model.grouped_mm import grouped_mm, grouped_mm_supported

__all__ = [
    "ExpertPool",
    "aligned_for_grouped_mm",
    "combine",
    "compute_dtype",
    "grouped_mm_supported",
    "sort_by_expert",
]


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the expert GEMMs: autocast's dtype when autocast is on for x's device, else x's.

    ``F.grouped_mm`` is not autocast-aware: with fp32 master weights under ``bf16-mixed`` it would
    run its fp32 fallback. So the experts cast tokens and stacked weights themselves; gradients
    still flow to the fp32 weights through the cast.
    """
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def sort_by_expert(indices: Tensor, keep: Tensor | None, num_experts: int) -> tuple[Tensor, Tensor]:
    """The N*k assignments grouped by expert: ``(order, counts)``, no host sync.

    ``order``: a stable argsort of the flattened (token, slot) assignments by expert id, skipped
    ones (``keep == False``, given id E) last; ``counts``: (E + 1,) assignments per id, the last
    entry counting the skipped ones.
    """
    flat_expert = indices.reshape(-1)
    if keep is not None:
        flat_expert = torch.where(keep.reshape(-1), flat_expert, torch.full_like(flat_expert, num_experts))
    order = torch.argsort(flat_expert, stable=True)
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=indices.device)
    counts.scatter_add_(0, flat_expert, torch.ones_like(flat_expert))
    return order, counts


def aligned_for_grouped_mm(dtype: torch.dtype, *dims: int) -> bool:
    """grouped_mm needs row strides that are multiples of 16 bytes."""
    return all((d * dtype.itemsize) % 16 == 0 for d in dims)


class ExpertPool(nn.Module):
    """E SwiGLU experts: ``y = (silu(x W1_e) * (x W3_e)) W2_e``.

    ``w1``, ``w3``: (E, d_model, d_ff) (gate, up); ``w2``: (E, d_ff, d_model).
    ``dispatch`` picks the implementation: ``grouped_mm`` (sort + one grouped GEMM, no host
    sync), ``gather_bmm`` (gather each assignment's weights + one bmm; copies weights, so only for
    a handful of tokens),
    ``sorted_split`` (sort + one matmul per contiguous slice; syncs for the split sizes),
    ``reference_loop`` (Mixtral-style mask loop, the test/benchmark reference) or ``auto``.
    """

    def __init__(
        self,
        num_experts: int,
        d_model: int,
        d_ff: int,
        dispatch: str = "auto",
        init_std: float = 0.02,
        out_init_std: float | None = None,
    ) -> None:
        super().__init__()
        if dispatch not in DISPATCH_IMPLS:
            raise ValueError(f"unknown dispatch {dispatch!r}; choose one of {DISPATCH_IMPLS}")
        self.num_experts = num_experts
        self.d_model = d_model
        self.d_ff = d_ff
        self.dispatch = dispatch
        self.w1 = nn.Parameter(torch.empty(num_experts, d_model, d_ff))
        self.w3 = nn.Parameter(torch.empty(num_experts, d_model, d_ff))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_ff, d_model))
        nn.init.normal_(self.w1, std=init_std)
        nn.init.normal_(self.w3, std=init_std)
        nn.init.normal_(self.w2, std=init_std if out_init_std is None else out_init_std)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, d_model={self.d_model}, d_ff={self.d_ff}, dispatch={self.dispatch}"

    def resolve_dispatch(self, x: Tensor, top_k: int | None = None) -> str:
        """The implementation ``auto`` stands for, given the input (and, if known, the router's k).

        Decode-sized batches without autograd (``N * k <= E`` assignments) take ``gather_bmm``: no
        sort, no grouped-GEMM offsets, static shapes (CUDA-graph friendly); each assignment reads
        one expert's weights, as the sorted path would. Larger batches sort: ``gather_bmm`` copies
        every assignment's weights, which measured slower on CPU from 16 decode rows up.
        """
        if self.dispatch != "auto":
            return self.dispatch
        if top_k is not None and not torch.is_grad_enabled() and x.shape[0] * top_k <= self.num_experts:
            return "gather_bmm"
        dtype = compute_dtype(x)
        if aligned_for_grouped_mm(dtype, self.d_model, self.d_ff) and grouped_mm_supported(
            x.device.type, dtype
        ):
            return "grouped_mm"
        return "sorted_split"

    def forward(
        self, x: Tensor, indices: Tensor, weights: Tensor, keep: Tensor | None = None, impl: str | None = None
    ) -> Tensor:
        """Combine ``sum_j weights[t, j] * expert_{indices[t, j]}(x[t])`` for each token t.

        ``x``: (N, d_model); ``indices``, ``weights``, ``keep``: (N, k). Assignments with
        ``keep == False`` are skipped (padding, capacity drops).
        """
        impl = impl or self.resolve_dispatch(x, indices.shape[1])
        if impl == "gather_bmm":
            return self._gather_bmm(x, indices, weights)
        if impl == "reference_loop":
            return self._reference_loop(x, indices, weights, keep)
        if impl == "grouped_mm":
            return self._sorted(x, indices, weights, keep, grouped=True)
        if impl == "sorted_split":
            return self._sorted(x, indices, weights, keep, grouped=False)
        raise ValueError(f"unknown dispatch {impl!r}; choose one of {DISPATCH_IMPLS[1:]}")

    def _sorted(
        self, x: Tensor, indices: Tensor, weights: Tensor, keep: Tensor | None, grouped: bool
    ) -> Tensor:
        n, k = indices.shape
        e = self.num_experts
        dt = compute_dtype(x)
        w1, w3, w2 = self.w1.to(dt), self.w3.to(dt), self.w2.to(dt)
        order, counts = sort_by_expert(indices, keep, e)
        xs = x.to(dt)[order // k]  # cast the N tokens once, then gather N*k rows
        if grouped:
            offsets = counts[:e].cumsum(0).to(torch.int32)
            if keep is None:  # every row belongs to an expert: nothing to mask
                h = F.silu(grouped_mm(xs, w1, offsets)) * grouped_mm(xs, w3, offsets)
                ys = grouped_mm(h, w2, offsets)
            else:
                # Rows past the last offset (skipped assignments) come back from grouped_mm as
                # uninitialised memory, forward and backward: mask them on the way in and out,
                # with `where` so that garbage (even NaN) never reaches x or the output. No host sync.
                row_ok = (torch.arange(xs.shape[0], device=x.device) < offsets[-1])[:, None]
                zero = torch.zeros((), dtype=xs.dtype, device=x.device)
                xs = torch.where(row_ok, xs, zero)
                h = F.silu(grouped_mm(xs, w1, offsets)) * grouped_mm(xs, w3, offsets)
                ys = torch.where(row_ok, grouped_mm(h, w2, offsets), zero)
        else:
            sizes = counts.tolist()  # host sync: the fallback path only
            parts = []
            for expert, chunk in enumerate(xs.split(sizes)):
                if expert == e:  # skipped assignments
                    parts.append(torch.zeros_like(chunk))
                elif chunk.shape[0] > 0:
                    h = F.silu(chunk @ w1[expert]) * (chunk @ w3[expert])
                    parts.append(h @ w2[expert])
                else:
                    parts.append(chunk.new_zeros(0, self.d_model))
            ys = torch.cat(parts, dim=0)
        # Un-sort with a scatter into (token, slot) order (deterministic, no atomics, sync-free),
        # then combine in fp32.
        unsorted = torch.empty_like(ys)
        unsorted[order] = ys
        return combine(unsorted.view(n, k, -1), weights).to(x.dtype)

    def _gather_bmm(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        """Decode-sized batches: gather each assignment's expert weights and run one bmm (no sort)."""
        # Skipped assignments already carry weight 0 (the router multiplies weights by keep).
        n, k = indices.shape
        dt = compute_dtype(x)
        flat = indices.reshape(-1)
        xs = x.to(dt).repeat_interleave(k, dim=0)[:, None, :]  # (N*k, 1, d)
        h = F.silu(torch.bmm(xs, self.w1[flat].to(dt))) * torch.bmm(xs, self.w3[flat].to(dt))
        ys = torch.bmm(h, self.w2[flat].to(dt)).view(n, k, self.d_model)
        return combine(ys, weights).to(x.dtype)

    def _reference_loop(self, x: Tensor, indices: Tensor, weights: Tensor, keep: Tensor | None) -> Tensor:
        dt = compute_dtype(x)
        out = torch.zeros(x.shape[0], self.d_model, dtype=torch.float32, device=x.device)
        for expert in range(self.num_experts):
            mask = indices == expert
            if keep is not None:
                mask = mask & keep
            token, slot = torch.nonzero(mask, as_tuple=True)
            if token.numel() == 0:
                continue
            xe = x[token].to(dt)
            h = F.silu(xe @ self.w1[expert].to(dt)) * (xe @ self.w3[expert].to(dt))
            ye = (h @ self.w2[expert].to(dt)).float() * weights[token, slot].float()[:, None]
            out.index_add_(0, token, ye)
        return out.to(x.dtype)


def combine(ys: Tensor, weights: Tensor) -> Tensor:
    """``sum_j weights[t, j] * ys[t, j]`` in fp32 for ys (N, k, d): autocast never lowers it."""
    return (ys.float() * weights.float()[:, :, None]).sum(dim=1)
