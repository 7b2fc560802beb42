"""Tokenize raw sources once into sharded token files (the engine of ``moe-swarm-prepare``).

Each source is cut into units (``data/sources.py``); every unit becomes one shard, written by a
worker process on its own (``data/shards.py``). A shard already written for the same plan (same
input sizes and mtimes, tokenizer and unit size) is skipped, so a run stopped by SIGTERM or a crash
resumes where it stopped, and the same inputs always give the same bytes. ``manifest.json`` is
written last: its presence means the folder is complete.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moe_swarm.atomic import atomic_write_bytes
from moe_swarm.data import shards as fmt
from moe_swarm.data.sources import Source, SourceError, Unit, open_source, parse_input, plan_units, read_unit
from moe_swarm.data.tokenizer import HFTokenizer, TokenizerError, load_tokenizer

BATCH_DOCS = 256
BPE_SPECIALS = ["<|endoftext|>", "<|pad|>", "<|bos|>"]


@dataclass(frozen=True)
class TokenizerInfo:
    """What the data records about its tokenizer; ``path`` is None for the byte tokenizer."""

    spec: str
    path: str | None
    fingerprint: str
    vocab_size: int
    eos_id: int

    def as_dict(self) -> dict:
        return {
            "spec": self.spec,
            "fingerprint": self.fingerprint,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
        }


def describe_tokenizer(spec: str) -> TokenizerInfo:
    """Fingerprint, vocabulary size and EOS id of ``byte`` or a tokenizer.json (or its folder), as
    :func:`moe_swarm.data.tokenizer.load_tokenizer` reads it: the same fingerprint a model records."""
    path = None if spec == "byte" else str(Path(spec).expanduser().resolve())
    if path is not None and not Path(path).exists():
        raise SourceError(f"--tokenizer {spec}: no such tokenizer.json (or use 'byte' or 'bpe:VOCAB')")
    try:
        tok = load_tokenizer(path or "byte")
    except (TokenizerError, ImportError) as exc:
        raise SourceError(f"--tokenizer {spec}: {exc}") from None
    if tok.eos_id is None:
        raise SourceError(f"--tokenizer {spec}: it has no EOS token (tokenizer_config.json eos_token)")
    return TokenizerInfo(spec, path, tok.fingerprint(), int(tok.vocab_size), int(tok.eos_id))


def train_bpe(units: list[Unit], vocab_size: int, out: Path) -> None:
    """Train a byte-level BPE on the documents of ``units`` and save it as ``out`` (atomically)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BPE_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((doc for unit in units for doc in read_unit(unit)), trainer=trainer)
    eos, pad, bos = BPE_SPECIALS
    config = {"bos_token": bos, "eos_token": eos, "pad_token": pad, "model_max_length": 1 << 30}
    atomic_write_bytes(out.with_name("tokenizer_config.json"), fmt.json_bytes(config))
    atomic_write_bytes(out, tok.to_str().encode())


class _Encoder:
    """Documents -> id arrays, with the byte tokenizer's fast path or ``tokenizers``' batch encoding."""

    def __init__(self, path: str | None) -> None:
        self.hf = HFTokenizer.from_path(path).tokenizer if path else None

    def __call__(self, docs: list[str]) -> list[np.ndarray]:
        if self.hf is None:
            return [np.frombuffer(d.encode("utf-8"), dtype=np.uint8) for d in docs]
        encodings = self.hf.encode_batch(docs, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]


_ENCODERS: dict[str | None, _Encoder] = {}


@dataclass(frozen=True)
class ShardJob:
    unit: Unit
    name: str
    folder: str
    tokenizer_path: str | None
    dtype: str
    plan: str


def tokenize_unit(job: ShardJob) -> dict:
    """Read, tokenize and write one unit as one shard (runs in a worker process)."""
    encode = _ENCODERS.setdefault(job.tokenizer_path, _Encoder(job.tokenizer_path))
    docs: list[np.ndarray] = []
    batch: list[str] = []
    for text in read_unit(job.unit):
        batch.append(text)
        if len(batch) == BATCH_DOCS:
            docs += encode(batch)
            batch = []
    docs += encode(batch) if batch else []
    meta = {"plan": job.plan, "source": job.unit.source, "bytes": job.unit.approx_bytes}
    return fmt.write_shard(Path(job.folder), job.name, docs, np.dtype(job.dtype), meta)


@dataclass
class PrepareResult:
    manifest: dict
    written: int
    skipped: int

    def summary(self, out_dir: str | Path) -> str:
        m = self.manifest
        return (
            f"wrote {out_dir}: {m['tokens']} tokens, {m['documents']} documents, {len(m['shards'])} shards "
            f"({self.written} written, {self.skipped} already done), tokenizer {m['tokenizer']['fingerprint']}"
        )


def prepare(
    inputs: list[tuple[str, str]],
    out_dir: str | Path,
    *,
    tokenizer: str = "byte",
    text_field: str = "text",
    fields: Mapping[str, str] | None = None,
    workers: int = 1,
    unit_bytes: int = 64 << 20,
    progress: Callable[[int, int, int], None] | None = None,
) -> PrepareResult:
    """Tokenize ``inputs`` ((name, path) pairs) into ``out_dir``; see the module docstring.
    ``text_field``: the JSONL field / column of every source that ``fields`` (name -> field) does not
    name."""
    names = [n for n, _ in inputs]
    if len(set(names)) != len(names):
        raise SourceError(f"source names must be unique, got {names}; name them NAME=PATH")
    fields = dict(fields or {})
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise SourceError(f"--field names source(s) {unknown} that no --input has (sources: {names})")
    out = Path(out_dir)
    shard_dir = out / fmt.SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    fmt.remove_stale_temporaries(out)
    fmt.remove_stale_temporaries(shard_dir)
    sources = [open_source(name, path, fields.get(name, text_field)) for name, path in inputs]
    units = {s.name: plan_units(s, unit_bytes) for s in sources}
    tok = _resolve_tokenizer(tokenizer, out, sources, units)
    dtype = fmt.token_dtype(tok.vocab_size)
    plan = _plan_hash(sources, tok, unit_bytes, dtype)
    jobs = [
        ShardJob(u, f"{src}-{k:05d}", str(shard_dir), tok.path, dtype.str, plan)
        for src, su in units.items()
        for k, u in enumerate(su)
    ]
    done = {j.name: fmt.finished_shard(shard_dir, j.name, plan, dtype.itemsize) for j in jobs}
    todo = [j for j in jobs if done[j.name] is None]
    total_bytes = sum(j.unit.approx_bytes for j in jobs)
    done_bytes = sum(j.unit.approx_bytes for j in jobs if done[j.name] is not None)
    tokens = 0
    for info in _run(todo, workers):
        done[info["name"]] = info
        done_bytes += info["bytes"]
        tokens += info["tokens"]
        if progress is not None:
            progress(done_bytes, total_bytes, tokens)
    manifest = _manifest(sources, tok, dtype, plan, [done[j.name] for j in jobs])
    atomic_write_bytes(out / fmt.MANIFEST, fmt.json_bytes(manifest))
    return PrepareResult(manifest, len(todo), len(jobs) - len(todo))


def _resolve_tokenizer(spec: str, out: Path, sources: list[Source], units: dict) -> TokenizerInfo:
    """``bpe:N`` trains (once per input plan) and saves ``out/tokenizer.json``; others are described."""
    if not spec.startswith("bpe:"):
        return describe_tokenizer(spec)
    try:
        vocab = int(spec[4:])
    except ValueError:
        raise SourceError(f"--tokenizer {spec}: expected bpe:VOCAB_SIZE, e.g. bpe:8000") from None
    path, stamp = out / "tokenizer.json", out / "tokenizer.plan"
    key = hashlib.sha256(fmt.json_bytes([vocab, [s.stats for s in sources]])).hexdigest()
    if not (path.exists() and stamp.exists() and stamp.read_text() == key):
        train_bpe([u for su in units.values() for u in su], vocab, path)
        atomic_write_bytes(stamp, key.encode())
    return describe_tokenizer(str(path))


def _plan_hash(sources: list[Source], tok: TokenizerInfo, unit_bytes: int, dtype: np.dtype) -> str:
    plan = {
        "format": fmt.FORMAT,
        "sources": [[s.name, s.kind, s.text_field, s.stats] for s in sources],
        "tokenizer": tok.fingerprint,
        "unit_bytes": unit_bytes,
        "dtype": dtype.str,
    }
    return hashlib.sha256(fmt.json_bytes(plan)).hexdigest()


def _run(jobs: list[ShardJob], workers: int) -> Iterator[dict]:
    """Shard markers as jobs finish; ``workers > 1`` uses spawned processes (never fork)."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(tokenize_unit, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(tokenize_unit, jobs)


def _manifest(
    sources: list[Source], tok: TokenizerInfo, dtype: np.dtype, plan: str, shards: list[dict]
) -> dict:
    per_source = []
    for s in sources:
        mine = [sh for sh in shards if sh["source"] == s.name]
        docs, count = sum(sh["documents"] for sh in mine), sum(sh["tokens"] for sh in mine)
        if docs == 0:
            raise SourceError(f"source {s.name!r}: {s.path} has no non-empty documents")
        per_source.append(
            {
                "name": s.name,
                "kind": s.kind,
                "path": s.path,
                "field": s.text_field,
                "files": s.stats,
                "documents": docs,
                "tokens": count,
            }
        )
    keep = ("name", "source", "tokens", "documents", "sha256")
    return {
        "format": fmt.FORMAT,
        "plan": plan,
        "tokenizer": tok.as_dict(),
        "dtype": dtype.str,
        "sources": per_source,
        "shards": [{k: sh[k] for k in keep} for sh in shards],
        "documents": sum(s["documents"] for s in per_source),
        "tokens": sum(s["tokens"] for s in per_source),
    }


class ProgressReporter:
    """tokens/s and ETA: a rich bar on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, stream=sys.stderr, every_s: float = 2.0) -> None:
        self.stream, self.every_s = stream, every_s
        self.start = self.last = time.monotonic()
        self.bar = None
        if getattr(stream, "isatty", lambda: False)():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("prepare"), BarColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn()
            )
            self.task = self.bar.add_task("prepare", total=1, rate="")
            self.bar.start()

    def __call__(self, done_bytes: int, total_bytes: int, tokens: int) -> None:
        now = time.monotonic()
        rate = tokens / max(now - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(self.task, completed=done_bytes, total=total_bytes, rate=f"{rate:,.0f} tokens/s")
            return
        if now - self.last >= self.every_s or done_bytes >= total_bytes:
            self.last = now
            frac = done_bytes / max(total_bytes, 1)
            elapsed = now - self.start
            eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
            print(
                f"prepare: {frac:6.1%} {tokens:,} tokens {rate:,.0f} tokens/s ETA {eta:.0f}s",
                file=self.stream,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``moe-swarm-prepare`` flags of the sharded mode."""
    add = parser.add_argument
    add(
        "--input",
        nargs="+",
        default=None,
        help="[NAME=]PATH: a text file or folder, .jsonl, .parquet, "
        "or a datasets save_to_disk folder (one source each)",
    )
    add("--out-dir", type=Path, default=None, help="folder for shards/ and manifest.json")
    add(
        "--field",
        action="append",
        default=None,
        help="JSONL field / Parquet or Arrow column: FIELD for every source, or NAME=FIELD for one "
        "(repeatable; default: text)",
    )
    add("--tokenizer", default="byte", help="byte | PATH/tokenizer.json | bpe:VOCAB (trained here)")
    add("--workers", type=int, default=1, help="worker processes (default: 1)")
    add("--shard-mb", type=float, default=64.0, help="input MB per shard (default: 64)")


def parse_fields(specs: list[str]) -> tuple[str, dict[str, str]]:
    """``--field`` values -> (the default field, NAME -> FIELD for the sources given one)."""
    default, per_source = "text", {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep:
            default = spec
        elif not name or not value:
            raise SourceError(f"--field {spec!r}: give FIELD or NAME=FIELD")
        else:
            per_source[name] = value
    return default, per_source


def prepare_from_args(args: argparse.Namespace) -> PrepareResult:
    """Run :func:`prepare` for parsed CLI flags, with a progress display and SIGTERM -> exit 143."""
    exit_on_sigterm()
    text_field, fields = parse_fields(args.field or [])
    reporter = ProgressReporter()
    try:
        return prepare(
            [parse_input(spec) for spec in args.input],
            args.out_dir,
            tokenizer=args.tokenizer,
            text_field=text_field,
            fields=fields,
            workers=args.workers,
            unit_bytes=int(args.shard_mb * (1 << 20)),
            progress=reporter,
        )
    finally:
        reporter.close()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit(143) so worker pools are torn down and finished shards kept."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
