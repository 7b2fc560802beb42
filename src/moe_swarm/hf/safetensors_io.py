"""Reading and writing safetensors files one tensor at a time, without memory maps.

``safetensors.safe_open`` maps the whole file, and every page it touches counts in the process's RSS
until the file is closed; ``save_file`` needs every tensor of a shard in memory at once. Import and
export instead read each tensor with plain file reads into a fresh buffer and write each tensor as
soon as it is produced (the next one is produced while this one is written), so peak memory is the
model plus its largest tensor (two while writing). The format is the
documented one: an 8-byte little-endian header length, a JSON header (``dtype``, ``shape``,
``data_offsets`` per tensor, optional ``__metadata__``), then the tensors' bytes back to back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from moe_swarm.hf.families import HFError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}
_CHUNK = 1 << 30  # one read()/write() call moves at most this many bytes (Linux caps a call near 2 GiB)


class SafetensorsFormatError(HFError):
    """A file that is not a readable safetensors file; the message names it."""


class ShardReader:
    """The tensors of one safetensors file: names, shapes, dtypes, and each tensor read on request."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise SafetensorsFormatError(f"{self.path}: not a safetensors file (shorter than 8 bytes)")
            n = int.from_bytes(head, "little")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError, MemoryError) as exc:
                raise SafetensorsFormatError(f"{self.path}: not a safetensors file ({exc})") from None
        header.pop("__metadata__", None)
        self.start = 8 + n
        self.entries: dict[str, dict] = header
        self.bytes_read = 0  # tensor bytes read so far (per-rank slice reading is checked with it)

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        code = self.entries[name]["dtype"]
        if code not in DTYPES:
            raise SafetensorsFormatError(f"{self.path}: tensor {name} has dtype {code}, not supported")
        return DTYPES[code]

    def read(self, name: str) -> Tensor:
        """The tensor ``name`` in a buffer of its own (the file is not kept mapped)."""
        shape = self.shape(name)
        return self.read_rows(name, 0, shape[0] if shape else 1) if shape else self._read_all(name)

    def read_rows(self, name: str, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` of dimension 0 of ``name``: one contiguous byte range of the file, so a
        rank that holds a slice reads only its slice."""
        shape, dtype = self.shape(name), self.dtype(name)
        if not 0 <= start <= stop <= shape[0]:
            raise ValueError(f"{self.path}: rows {start}:{stop} of {name} (it has {shape[0]})")
        row = math.prod(shape[1:]) * torch.empty((), dtype=dtype).element_size()
        begin = self.entries[name]["data_offsets"][0] + start * row
        out_shape = (stop - start, *shape[1:])
        buf = self._read_bytes(name, begin, (stop - start) * row)
        return buf.view(dtype).reshape(out_shape) if buf.numel() else torch.empty(out_shape, dtype=dtype)

    def _read_all(self, name: str) -> Tensor:
        begin, end = self.entries[name]["data_offsets"]
        return self._read_bytes(name, begin, end - begin).view(self.dtype(name)).reshape(self.shape(name))

    def _read_bytes(self, name: str, begin: int, nbytes: int) -> Tensor:
        buf = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.start + begin)
            done = 0
            while done < len(view):
                got = f.readinto(view[done : done + _CHUNK])
                if not got:
                    raise SafetensorsFormatError(f"{self.path}: tensor {name} is cut short (file truncated)")
                done += got
        self.bytes_read += nbytes
        return buf


def write_tensors(
    path: str | Path,
    specs: Iterable[tuple[str, tuple[int, ...], torch.dtype]],
    produce: Callable[[str], Tensor],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write a safetensors file of the tensors ``specs`` names (with their shape and dtype), calling
    ``produce(name)`` for each one just before it is written; returns the bytes of tensor data."""
    specs = list(specs)
    header: dict[str, dict] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {
            "dtype": NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    # The next tensor is produced (a transposed copy: CPU work, GIL released) while this one is written
    # (I/O): at most two produced tensors are alive at a time.
    with open(path, "wb") as f, ThreadPoolExecutor(max_workers=1) as pool:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        pending = pool.submit(produce, specs[0][0]) if specs else None
        for i, (name, shape, dtype) in enumerate(specs):
            t = pending.result()
            pending = pool.submit(produce, specs[i + 1][0]) if i + 1 < len(specs) else None
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ValueError(
                    f"{name}: produced {tuple(t.shape)} {t.dtype}, declared {tuple(shape)} {dtype}"
                )
            data = memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())
            for start in range(0, len(data), _CHUNK):
                f.write(data[start : start + _CHUNK])
            del t, data
    return offset


__all__ = ["DTYPES", "SafetensorsFormatError", "ShardReader", "write_tensors"]
