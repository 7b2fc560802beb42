"""The KV cache: keys and values of every layer for a batch of rows, and the operations decoding needs.

The layout, (n_layers, B, H_kv, max_len, head_dim) per tensor (H_kv = ``cfg.kv_heads``: grouped-query
attention caches only the key/value heads), is known only here: attention writes
through ``append``/``write_at``, and the swarms move cached positions between rows with ``fork``,
``slice`` and ``commit``, never by indexing the tensors. A layout change (grouped-query
attention, a paged cache) touches only this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from moe_swarm.model.config import TransformerConfig


@dataclass
class KVSpan:
    """A copy of the cached keys/values of some rows over a span of positions (``KVCache.slice``)."""

    k: Tensor  # (n_layers, rows, H_kv, positions, head_dim)
    v: Tensor

    @property
    def num_positions(self) -> int:
        return int(self.k.shape[3])


class KVCache:
    """Preallocated keys/values of every layer for ``batch_size`` rows and ``max_len`` positions.

    ``length`` positions are filled, the same number for every row (what one batched forward needs).
    A cache can also be a store of rows of different lengths (the step swarm's trajectories): the
    caller then keeps each row's length and passes it to ``fork``.
    """

    def __init__(self, cfg: TransformerConfig, batch_size: int, max_len: int, device, dtype) -> None:
        self.cfg = cfg
        shape = (cfg.n_layers, batch_size, cfg.kv_heads, max_len, cfg.resolved_head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len

    @property
    def batch_size(self) -> int:
        return int(self.k.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    @property
    def device(self) -> torch.device:
        return self.k.device

    # ------------------------------------------------------------------ attention writes
    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store (B, H_kv, T, head_dim) keys/values after the filled positions of ``layer``; return the
        layer's keys/values up to the new end (``advance`` moves ``length`` once all layers ran)."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} > max_len={self.max_len}; raise max_seq_len")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def write_at(self, layer: int, pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Static-shape write of one position per row: (B, H_kv, 1, head_dim) keys/values in place at
        ``pos`` ((1,) int64). Returns the layer's whole keys/values and the (1, max_len) mask of the
        positions a query at ``pos`` sees: fixed shapes, no Python int, so the step compiles once."""
        keys, values = self.k[layer], self.v[layer]
        keys.index_copy_(2, pos, k.to(keys.dtype))
        values.index_copy_(2, pos, v.to(values.dtype))
        visible = (torch.arange(self.max_len, device=pos.device) <= pos)[None, :]
        return keys, values, visible

    def advance(self, n: int) -> None:
        """``n`` more positions are filled (after a forward wrote them in every layer)."""
        self.length += n

    def mark_static_address(self) -> None:
        """Tell ``torch.compile`` the tensors keep their addresses (CUDA graphs capture the writes)."""
        torch._dynamo.mark_static_address(self.k)
        torch._dynamo.mark_static_address(self.v)

    # ------------------------------------------------------------------ moving positions between rows
    def fork(self, rows: Tensor | Sequence[int], room: int, length: int | None = None) -> KVCache:
        """A new cache whose row r is a copy of the first ``length`` (default: all filled) positions of
        row ``rows[r]`` (rows may repeat: one prefix, many continuations), with ``room`` free positions."""
        n = self.length if length is None else length
        idx = torch.as_tensor(rows, dtype=torch.long).to(self.device)
        out = KVCache(self.cfg, int(idx.numel()), n + room, self.device, self.dtype)
        out.k[:, :, :, :n] = self.k[:, idx, :, :n]
        out.v[:, :, :, :n] = self.v[:, idx, :, :n]
        out.length = n
        return out

    def slice(self, row: int, start: int, end: int) -> KVSpan:
        """A copy of positions ``start:end`` of ``row`` (e.g. the keys/values of one proposal)."""
        return KVSpan(
            self.k[:, row : row + 1, :, start:end].clone(), self.v[:, row : row + 1, :, start:end].clone()
        )

    def commit(self, row: int, start: int, span: KVSpan) -> None:
        """Write ``span`` (one row) at positions ``start:`` of ``row``; ``length`` is the caller's."""
        end = start + span.num_positions
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} > max_len={self.max_len}")
        self.k[:, row : row + 1, :, start:end] = span.k
        self.v[:, row : row + 1, :, start:end] = span.v

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (they are overwritten by the next writes)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length
