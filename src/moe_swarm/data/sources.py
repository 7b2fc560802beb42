"""Raw-text inputs of ``moe-swarm-prepare``: text files/folders, JSONL, Parquet and ``datasets`` folders.

A source is cut into :class:`Unit` s (a file's byte range, row range or row groups) that a worker
reads on its own, so one large file is tokenized in parallel and every unit becomes one shard.
Reading is strict: invalid UTF-8, a JSONL line without the field or a corrupt Parquet file is a
:class:`SourceError` naming the file and the line (or row), never a silently skipped document.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SOURCE_KINDS = ("text", "jsonl", "parquet", "arrow")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_READ_BLOCK = 1 << 24


class SourceError(ValueError):
    """Input data a user must fix; the message names the file and the line, row or key."""


@dataclass(frozen=True)
class Unit:
    """One independently readable piece of a source; ``start``/``stop`` are bytes (jsonl),
    rows (arrow), row groups (parquet) or indexes into ``files`` (text)."""

    source: str
    kind: str
    files: tuple[str, ...]
    start: int
    stop: int
    first_line: int = 1  # jsonl: the line number at ``start``
    text_field: str = "text"
    approx_bytes: int = 0


@dataclass
class Source:
    """A named input: its kind, files and the field/column holding the text."""

    name: str
    path: str
    kind: str
    files: list[str]
    text_field: str = "text"
    stats: list[dict] = field(default_factory=list)


def parse_input(spec: str, text_field: str = "text") -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (name = the file or folder name without suffix) -> (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        name = Path(spec.rstrip("/")).name.split(".")[0] or "data"
    if not name.replace("-", "").replace("_", "").isalnum():
        raise SourceError(f"source name {name!r} (from {spec!r}): use letters, digits, '-' and '_' only")
    return name, path


def open_source(name: str, path: str, text_field: str = "text") -> Source:
    """Find a source's kind and files; a missing path or an empty folder is a :class:`SourceError`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f"source {name!r}: {path}: no such file or folder")
    if p.is_dir() and (p / "dataset_dict.json").exists():
        raise SourceError(
            f"source {name!r}: {path} is a DatasetDict; give one split's folder, e.g. {p / 'train'}"
        )
    if p.is_dir() and ((p / "state.json").exists() or (p / "dataset_info.json").exists()):
        kind, files = "arrow", _arrow_files(p)
    elif p.is_dir():
        files = sorted(
            str(f)
            for f in p.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
        kinds = {_file_kind(f) for f in files}
        if len(kinds) > 1:
            raise SourceError(
                f"source {name!r}: {path} mixes file kinds {sorted(kinds)}; give one source each"
            )
        kind = kinds.pop() if kinds else "text"
    else:
        kind, files = _file_kind(str(p)), [str(p)]
    if not files:
        raise SourceError(f"source {name!r}: {path} holds no files")
    files = [str(Path(f).resolve()) for f in files]
    stats = [{"path": f, "size": os.stat(f).st_size, "mtime_ns": os.stat(f).st_mtime_ns} for f in files]
    return Source(name, str(p.resolve()), kind, files, text_field, stats)


def _file_kind(path: str) -> str:
    if path.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    if path.endswith(".parquet"):
        return "parquet"
    if path.endswith(".arrow"):
        return "arrow"
    return "text"


def _arrow_files(folder: Path) -> list[str]:
    """A ``save_to_disk`` folder's Arrow files in their recorded order (``state.json``)."""
    state = folder / "state.json"
    if state.exists():
        try:
            names = [entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(
                f"{state}: not a datasets state file ({exc!r}); key '_data_files' expected"
            ) from None
        return [str(folder / n) for n in names]
    return sorted(str(f) for f in folder.glob("*.arrow"))


def plan_units(source: Source, unit_bytes: int) -> list[Unit]:
    """Cut a source into units of about ``unit_bytes`` of input each (in a fixed order)."""
    make = {"text": _text_units, "jsonl": _jsonl_units, "parquet": _parquet_units, "arrow": _arrow_units}
    units = make[source.kind](source, max(1, unit_bytes))
    if not units:
        raise SourceError(f"source {source.name!r}: {source.path} is empty (no documents)")
    return units


def _unit(source: Source, files, start, stop, approx, first_line=1) -> Unit:
    return Unit(source.name, source.kind, tuple(files), start, stop, first_line, source.text_field, approx)


def _text_units(source: Source, unit_bytes: int) -> list[Unit]:
    units, start, size = [], 0, 0
    sizes = [s["size"] for s in source.stats]
    for i, n in enumerate(sizes):
        size += n
        if size >= unit_bytes or i == len(sizes) - 1:
            units.append(_unit(source, source.files, start, i + 1, size))
            start, size = i + 1, 0
    return units


def _jsonl_units(source: Source, unit_bytes: int) -> list[Unit]:
    """Byte ranges cut at line ends; each remembers its first line number for error messages."""
    units = []
    for path, stat in zip(source.files, source.stats):
        size, start, line = stat["size"], 0, 1
        with open(path, "rb") as f:
            while start < size:
                f.seek(start)
                pos, lines, last = start, 0, b"\n"
                target = min(size, start + unit_bytes)
                while pos < target:
                    block = f.read(min(_READ_BLOCK, target - pos))
                    lines, pos, last = lines + block.count(b"\n"), pos + len(block), block[-1:]
                if pos < size and last != b"\n":  # finish the line the cut fell into
                    rest = f.readline()
                    lines, pos = lines + rest.count(b"\n"), pos + len(rest)
                units.append(_unit(source, [path], start, pos, pos - start, line))
                start, line = pos, line + lines
    return units


def _parquet_units(source: Source, unit_bytes: int) -> list[Unit]:
    units = []
    for path in source.files:
        meta = _parquet_meta(path)
        _check_column(path, meta.schema.names, source.text_field)
        start, size = 0, 0
        for g in range(meta.num_row_groups):
            size += meta.row_group(g).total_byte_size
            if size >= unit_bytes or g == meta.num_row_groups - 1:
                units.append(_unit(source, [path], start, g + 1, size))
                start, size = g + 1, 0
    return units


def _parquet_meta(path: str):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for a damaged footer
        raise SourceError(f"{path}: not a readable Parquet file ({exc})") from None


def _check_column(path: str, names: list[str], column: str) -> None:
    if column not in names:
        raise SourceError(
            f"{path}: no column {column!r} (columns: {', '.join(names)}); pick one with --field"
        )


def _arrow_table(path: str):
    import pyarrow as pa

    try:
        source = pa.memory_map(path, "r")
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            return pa.ipc.open_file(source).read_all()
    except Exception as exc:
        raise SourceError(f"{path}: not a readable Arrow file ({exc})") from None


def _arrow_units(source: Source, unit_bytes: int) -> list[Unit]:
    units = []
    for path, stat in zip(source.files, source.stats):
        table = _arrow_table(path)
        _check_column(path, table.column_names, source.text_field)
        rows = table.num_rows
        per_unit = max(1, int(rows * unit_bytes / max(stat["size"], 1)))
        for start in range(0, rows, per_unit):
            stop = min(rows, start + per_unit)
            units.append(_unit(source, [path], start, stop, stat["size"] * (stop - start) // max(rows, 1)))
    return units


def read_unit(unit: Unit) -> Iterator[str]:
    """The documents of a unit, in order (empty documents are skipped)."""
    read = {"text": _read_text, "jsonl": _read_jsonl, "parquet": _read_parquet, "arrow": _read_arrow}
    for doc in read[unit.kind](unit):
        if doc:
            yield doc


def _decode(data: bytes, path: str, first_line: int = 1) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1)
        raise SourceError(
            f"{path}:{line}: invalid UTF-8 at byte {column} of the line ({exc.reason})"
        ) from None


def _read_text(unit: Unit) -> Iterator[str]:
    for path in unit.files[unit.start : unit.stop]:
        yield _decode(Path(path).read_bytes(), path)


def _read_jsonl(unit: Unit) -> Iterator[str]:
    (path,) = unit.files
    with open(path, "rb") as f:
        f.seek(unit.start)
        data = f.read(unit.stop - unit.start)
    for offset, raw in enumerate(data.split(b"\n")):
        line = unit.first_line + offset
        if not raw.strip():
            continue
        where = f"{path}:{line}"
        try:
            record = json.loads(_decode(raw, path, line))
        except ValueError as exc:
            raise SourceError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(record, dict) or unit.text_field not in record:
            raise SourceError(f"{where}: no field {unit.text_field!r} in this line; pick one with --field")
        text = record[unit.text_field]
        if not isinstance(text, str):
            raise SourceError(f"{where}: field {unit.text_field!r} is {type(text).__name__}, not a string")
        yield text


def _column_strings(column, path: str, first_row: int, name: str) -> Iterator[str]:
    for i, value in enumerate(column.to_pylist()):
        if value is not None and not isinstance(value, str):
            raise SourceError(
                f"{path}: row {first_row + i}: column {name!r} is {type(value).__name__}, not text"
            )
        yield value or ""


def _read_parquet(unit: Unit) -> Iterator[str]:
    import pyarrow.parquet as pq

    (path,) = unit.files
    try:
        pf = pq.ParquetFile(path)
        first_row = sum(pf.metadata.row_group(g).num_rows for g in range(unit.start))
        table = pf.read_row_groups(list(range(unit.start, unit.stop)), columns=[unit.text_field])
    except Exception as exc:
        raise SourceError(f"{path}: row groups {unit.start}..{unit.stop - 1} unreadable ({exc})") from None
    yield from _column_strings(table.column(0), path, first_row, unit.text_field)


def _read_arrow(unit: Unit) -> Iterator[str]:
    (path,) = unit.files
    table = _arrow_table(path).slice(unit.start, unit.stop - unit.start)
    yield from _column_strings(table.column(unit.text_field), path, unit.start, unit.text_field)
