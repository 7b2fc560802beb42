"""ExpertPool: E SwiGLU experts as stacked weights, and the token dispatch/combine around them.

Weights are stacked ``(E, ...)`` tensors, never a list of modules: this allows grouped matmuls,
sharding on dim 0, and every expert receives a gradient each step (no DDP unused parameters).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_swarm.model.config import DISPATCH_IMPLS


@functools.cache
def grouped_mm_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``F.grouped_mm`` runs forward and backward for this device type and dtype here.

    Probed once on a tiny problem; the answer is cached, so the probe's sync happens once.
    """
    if not hasattr(F, "grouped_mm"):
        return False
    if device_type == "cuda" and not torch.cuda.is_available():
        return False
    try:
        # A probe first made under no_grad/inference_mode must still test backward.
        with torch.inference_mode(False), torch.enable_grad():
            a = torch.randn(8, 16, device=device_type, dtype=dtype, requires_grad=True)
            b = torch.randn(2, 16, 16, device=device_type, dtype=dtype, requires_grad=True)
            offs = torch.tensor([3, 8], device=device_type, dtype=torch.int32)
            out = F.grouped_mm(a, b, offs=offs)
            out.backward(torch.ones_like(out))
        return a.grad is not None and b.grad is not None
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def _aligned_for_grouped_mm(dtype: torch.dtype, *dims: int) -> bool:
    """grouped_mm needs row strides that are multiples of 16 bytes."""
    size = torch.empty((), dtype=dtype).element_size()
    return all((d * size) % 16 == 0 for d in dims)


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

    def resolve_dispatch(self, x: Tensor) -> str:
        """The implementation ``auto`` stands for, given the input's device and dtype.

        ``gather_bmm`` is never chosen automatically: on CPU it measured slower than grouped_mm
        from 16 decode rows up (it copies every assignment's weights) and equal at one row.
        """
        if self.dispatch != "auto":
            return self.dispatch
        if _aligned_for_grouped_mm(x.dtype, self.d_model, self.d_ff) and grouped_mm_supported(
            x.device.type, x.dtype
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
        impl = impl or self.resolve_dispatch(x)
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
        flat_expert = indices.reshape(-1)
        if keep is not None:
            flat_expert = torch.where(keep.reshape(-1), flat_expert, torch.full_like(flat_expert, e))
        # Stable sort groups assignments by expert; skipped ones (id E) go to the end.
        order = torch.argsort(flat_expert, stable=True)
        token_of = order // k
        counts = torch.zeros(e + 1, dtype=torch.int64, device=x.device)
        counts.scatter_add_(0, flat_expert, torch.ones_like(flat_expert))
        xs = x[token_of]
        if grouped:
            offsets = counts[:e].cumsum(0).to(torch.int32)
            if keep is None:  # every row belongs to an expert: nothing to mask
                h = F.silu(F.grouped_mm(xs, self.w1, offs=offsets)) * F.grouped_mm(xs, self.w3, offs=offsets)
                ys = F.grouped_mm(h, self.w2, offs=offsets)
            else:
                # Rows past the last offset (skipped assignments) come back from grouped_mm as
                # uninitialised memory, forward and backward: mask them on the way in and out,
                # with `where` so that garbage (even NaN) never reaches x or the output. No host sync.
                row_ok = (torch.arange(xs.shape[0], device=x.device) < offsets[-1])[:, None]
                zero = torch.zeros((), dtype=xs.dtype, device=x.device)
                xs = torch.where(row_ok, xs, zero)
                h = F.silu(F.grouped_mm(xs, self.w1, offs=offsets)) * F.grouped_mm(xs, self.w3, offs=offsets)
                ys = torch.where(row_ok, F.grouped_mm(h, self.w2, offs=offsets), zero)
        else:
            sizes = counts.tolist()  # host sync: the fallback path only
            parts = []
            for expert, chunk in enumerate(xs.split(sizes)):
                if expert == e:  # skipped assignments
                    parts.append(torch.zeros_like(chunk))
                elif chunk.shape[0] > 0:
                    h = F.silu(chunk @ self.w1[expert]) * (chunk @ self.w3[expert])
                    parts.append(h @ self.w2[expert])
                else:
                    parts.append(chunk.new_zeros(0, self.d_model))
            ys = torch.cat(parts, dim=0)
        # Un-sort with a scatter into (token, slot) order, weight in fp32, then sum over slots:
        # deterministic (no atomics) and sync-free.
        unsorted = torch.empty_like(ys)
        unsorted[order] = ys
        combined = (unsorted.view(n, k, -1).float() * weights.float()[:, :, None]).sum(dim=1)
        return combined.to(x.dtype)

    def _gather_bmm(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        # Skipped assignments already carry weight 0 (the router multiplies weights by keep).
        n, k = indices.shape
        flat = indices.reshape(-1)
        xs = x.repeat_interleave(k, dim=0)[:, None, :]  # (N*k, 1, d)
        h = F.silu(torch.bmm(xs, self.w1[flat])) * torch.bmm(xs, self.w3[flat])
        ys = torch.bmm(h, self.w2[flat]).view(n, k, self.d_model)
        return (ys.float() * weights.float()[:, :, None]).sum(dim=1).to(x.dtype)

    def _reference_loop(self, x: Tensor, indices: Tensor, weights: Tensor, keep: Tensor | None) -> Tensor:
        out = torch.zeros(x.shape[0], self.d_model, dtype=torch.float32, device=x.device)
        for expert in range(self.num_experts):
            mask = indices == expert
            if keep is not None:
                mask = mask & keep
            token, slot = torch.nonzero(mask, as_tuple=True)
            if token.numel() == 0:
                continue
            xe = x[token]
            h = F.silu(xe @ self.w1[expert]) * (xe @ self.w3[expert])
            ye = (h @ self.w2[expert]).float() * weights[token, slot].float()[:, None]
            out.index_add_(0, token, ye)
        return out.to(x.dtype)
