"""``F.grouped_mm`` behind a capability probe and a compile-safe custom op.

Why a custom op: dynamo traces ``aten._grouped_mm`` through a meta function that accepts bf16
operands only ("Expected inputs of BF16 type"), and inductor cannot lower it on CPU. Inside
``torch.compile`` the expert GEMMs therefore go through ``moe_swarm::grouped_mm``, an opaque op with a
fake (shape-only) implementation and its own backward, except on CUDA with bf16 operands, where the
native op compiles. Eager code calls ``F.grouped_mm`` directly.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.compiler.assume_constant_result  # torch.compile runs the probe eagerly, never traces it
def grouped_mm_supported(device_type: str, dtype: torch.dtype) -> bool:
    return _probe(device_type, dtype)


grouped_mm_supported.cache_clear = lambda: _probe.cache_clear()  # for tests that re-probe


@functools.cache
def _probe(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``F.grouped_mm`` runs forward and backward for this device type and dtype here.

    Probed once on a tiny problem with autocast off (autocast would change the dtypes the probe
    tests) and grad on; the answer is cached, so the probe's sync happens once.
    """
    if not hasattr(F, "grouped_mm"):
        return False
    if device_type == "cuda" and not torch.cuda.is_available():
        return False
    try:
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(device_type, enabled=False),
        ):
            a = torch.randn(8, 16, device=device_type, dtype=dtype, requires_grad=True)
            b = torch.randn(2, 16, 16, device=device_type, dtype=dtype, requires_grad=True)
            offs = torch.tensor([3, 8], device=device_type, dtype=torch.int32)
            out = F.grouped_mm(a, b, offs=offs)
            out.backward(torch.ones_like(out))
        return a.grad is not None and b.grad is not None
    except (RuntimeError, NotImplementedError, TypeError):
        return False


@torch.library.custom_op("moe_swarm::grouped_mm", mutates_args=())
def _grouped_mm_op(a: Tensor, b: Tensor, offs: Tensor) -> Tensor:
    return F.grouped_mm(a, b, offs=offs)


@_grouped_mm_op.register_fake
def _(a: Tensor, b: Tensor, offs: Tensor) -> Tensor:
    return a.new_empty(a.shape[0], b.shape[-1])


@torch.library.custom_op("moe_swarm::grouped_mm_backward", mutates_args=())
def _grouped_mm_backward_op(a: Tensor, b: Tensor, offs: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    # d/da: each group's rows times its expert's B^T; d/db: per group A_g^T @ grad_g (the 2d x 2d
    # grouped_mm, groups along the shared dimension). Checked against autograd in the tests.
    ga = F.grouped_mm(grad, b.transpose(-2, -1), offs=offs)
    gb = F.grouped_mm(a.t(), grad, offs=offs)
    return ga, gb


@_grouped_mm_backward_op.register_fake
def _(a: Tensor, b: Tensor, offs: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(a), torch.empty_like(b)


def _setup_context(ctx, inputs, output) -> None:
    a, b, offs = inputs
    ctx.save_for_backward(a, b, offs)


def _backward(ctx, grad: Tensor):
    a, b, offs = ctx.saved_tensors
    ga, gb = _grouped_mm_backward_op(a, b, offs, grad.contiguous())
    return ga, gb, None


_grouped_mm_op.register_autograd(_backward, setup_context=_setup_context)


def grouped_mm(a: Tensor, b: Tensor, offs: Tensor) -> Tensor:
    """``F.grouped_mm(a, b, offs=offs)`` for a (rows, k) x (E, k, n) problem, compile-safe.

    Under ``torch.compile`` every case but CUDA bf16 goes through the opaque custom op.
    """
    if torch.compiler.is_compiling() and not (a.is_cuda and a.dtype == torch.bfloat16):
        return _grouped_mm_op(a, b, offs)
    return F.grouped_mm(a, b, offs=offs)
