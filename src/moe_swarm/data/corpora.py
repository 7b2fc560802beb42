"""Byte-level text corpora that need no download.

``load_corpus`` returns a 1-D tensor of token ids:

* ``pydoc``  - CPython's bundled reference documentation (``pydoc_data.topics``), ~0.46 MB.
* ``stdlib`` - the ``.py`` sources of the running CPython's standard library (tests excluded), ~12 MB.
* ``files``  - the user's own text files, folders (recursive) and glob patterns.
* ``bin``    - a pre-tokenized nanoGPT-style file: raw little-endian uint16 ids, no header.

Text corpora come back as ``torch.uint8`` (one token per byte), ``bin`` as a ``torch.uint16``
view of a copy-on-write memory map (nothing is read until sliced). Both are
compact; convert the slices you use with ``.long()``.
"""

from __future__ import annotations

import glob
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

CORPUS_NAMES = ("pydoc", "stdlib", "files", "bin")
DOC_SEPARATOR = b"\n\n"
BIN_DTYPE = np.dtype("<u2")  # little-endian uint16, as nanoGPT writes it
_EXCLUDED_STDLIB_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_SKIPPED_DIRS = {"__pycache__", "node_modules"}
_TEXT_SNIFF_BYTES = 8192


def load_corpus(name: str, paths: list[str] | None = None, max_bytes: int | None = None) -> torch.Tensor:
    """Load a corpus by name as a 1-D token tensor (uint8 for text, uint16 for ``bin``).

    ``paths`` is required for ``files`` (files, folders, globs) and ``bin`` (one file) and
    refused otherwise. ``max_bytes`` keeps only the first ``max_bytes`` tokens.
    """
    if name not in CORPUS_NAMES:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(CORPUS_NAMES)}")
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive number of tokens or None, got {max_bytes}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [os.fspath(paths)]
    if name in ("pydoc", "stdlib") and paths:
        raise ValueError(
            f"corpus {name!r} takes no paths (got {paths}); use corpus='files' for your own text"
        )
    if name in ("files", "bin") and not paths:
        what = "text files, folders or glob patterns" if name == "files" else "the path of one .bin file"
        raise ValueError(f"corpus {name!r} needs paths: pass {what}")

    if name == "bin":
        if len(paths) != 1:
            raise ValueError(f"corpus 'bin' reads exactly one file, got {len(paths)} paths: {paths}")
        tokens = read_bin(paths[0])
        return tokens[:max_bytes] if max_bytes is not None else tokens

    if name == "pydoc":
        data = _pydoc_bytes()
    elif name == "stdlib":
        data = _join_files(_stdlib_files(), max_bytes)
    else:
        data = _join_files(_expand_user_paths(paths), max_bytes)
    if max_bytes is not None:
        data = data[:max_bytes]
    if not data:
        raise ValueError(
            f"corpus {name!r} is empty{f' for paths {paths}' if paths else ''}; give it some text"
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()  # torch-owned, so it pickles


def write_bin(tokens: torch.Tensor | np.ndarray | list[int], path: str | os.PathLike) -> int:
    """Write token ids as raw little-endian uint16 (nanoGPT format); returns the token count."""
    if isinstance(tokens, torch.Tensor):
        if tokens.dtype == torch.uint16:  # numpy conversion of uint16 tensors is supported, ops are not
            arr = tokens.numpy()
        else:
            arr = tokens.to(torch.int64).numpy()
    else:
        arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"write_bin expects a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"refusing to write an empty token file to {path}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 65535:
        raise ValueError(f"token ids must fit in uint16 [0, 65535], got range [{lo}, {hi}]")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr.astype(BIN_DTYPE, copy=False).tofile(path)
    return int(arr.size)


def read_bin(path: str | os.PathLike) -> torch.Tensor:
    """Memory-map a uint16 token file as a 1-D ``torch.uint16`` tensor (copy-on-write, lazy)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(
            f"token file {str(p)!r} does not exist; create it with `moe-swarm-prepare --out {p}`"
        )
    size = p.stat().st_size
    if size == 0:
        raise ValueError(f"token file {str(p)!r} is empty; re-run moe-swarm-prepare")
    if size % BIN_DTYPE.itemsize:
        raise ValueError(
            f"token file {str(p)!r} has {size} bytes, not a whole number of uint16 tokens; "
            "it is not a moe-swarm/nanoGPT .bin file"
        )
    return torch.from_numpy(np.memmap(p, dtype=BIN_DTYPE, mode="c"))


def split_train_val(tokens: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split into a contiguous train head and val tail (views, no overlap, no copy)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    if tokens.dim() != 1:
        raise ValueError(f"expected a 1-D token tensor, got shape {tuple(tokens.shape)}")
    n = tokens.numel()
    n_val = round(n * val_fraction)
    if n_val < 1 or n_val >= n:
        raise ValueError(
            f"val_fraction={val_fraction} of {n} tokens leaves an empty train or val part; "
            "use a larger corpus or a different val_fraction"
        )
    return tokens[: n - n_val], tokens[n - n_val :]


def _pydoc_bytes() -> bytes:
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distro builds strip pydoc_data
        raise ValueError(
            "this Python has no pydoc_data module (stripped build); use corpus='stdlib' or 'files'"
        ) from e
    return DOC_SEPARATOR.join(topics[key].encode("utf-8") for key in sorted(topics))


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise ValueError(f"standard library folder {root} not found; use corpus='pydoc' or 'files'")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_STDLIB_DIRS and not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if f.endswith(".py") and not f.startswith("test_"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _expand_user_paths(paths: list[str]) -> list[Path]:
    """Files in the order given; folders recursively (sorted, text files only); globs sorted."""
    files: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            files.append(p)

    for raw in paths:
        raw = os.path.expanduser(os.fspath(raw))
        if glob.has_magic(raw):
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                raise ValueError(f"glob {raw!r} matched nothing; check the pattern and the working directory")
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    for f in _walk_text_files(mp):
                        add(f)
                elif mp.is_file() and _looks_like_text(mp):
                    add(mp)
            continue
        p = Path(raw)
        if p.is_dir():
            before = len(files)
            for f in _walk_text_files(p):
                add(f)
            if len(files) == before:
                raise ValueError(f"folder {raw!r} contains no UTF-8 text files")
        elif p.is_file():
            if not _looks_like_text(p):
                raise ValueError(
                    f"{raw!r} is not UTF-8 text; pass text files, or use corpus='bin' for a pre-tokenized .bin"
                )
            add(p)
        else:
            raise ValueError(f"path {raw!r} does not exist (working directory: {os.getcwd()})")
    return files


def _walk_text_files(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIPPED_DIRS)
        for f in sorted(filenames):
            fp = Path(dirpath) / f
            if not f.startswith(".") and fp.is_file() and _looks_like_text(fp):
                yield fp


def _looks_like_text(path: Path) -> bool:
    """Text = no NUL byte and valid UTF-8 in the first 8 KiB (a cut multibyte char is tolerated)."""
    with open(path, "rb") as f:
        head = f.read(_TEXT_SNIFF_BYTES)
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return len(head) == _TEXT_SNIFF_BYTES and e.start >= len(head) - 3
    return True


def _join_files(files: list[Path], max_bytes: int | None) -> bytes:
    parts: list[bytes] = []
    total = 0
    for f in files:
        data = f.read_bytes()
        if not data:
            continue
        parts.append(data)
        total += len(data) + len(DOC_SEPARATOR)
        if max_bytes is not None and total >= max_bytes:
            break
    return DOC_SEPARATOR.join(parts)
