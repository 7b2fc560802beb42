"""``moe-swarm-prepare``: tokenize data once, into sharded token files (``--input``/``--out-dir``,
the engine is :mod:`moe_swarm.data.prepare`) or a byte-level uint16 ``.bin`` (``--corpus``/``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moe_swarm.data.corpora import load_corpus, split_train_val, write_bin
from moe_swarm.data.prepare import add_shard_arguments, prepare_from_args
from moe_swarm.errors import UserError


def val_path_for(out: Path) -> Path:
    """``FILE.bin`` -> ``FILE.val.bin``."""
    return out.with_name(out.name[: -len(".bin")] + ".val.bin")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-swarm-prepare",
        description="Tokenize text/JSONL/Parquet/datasets folders into token shards (--input, --out-dir), "
        "or a byte-level corpus into a uint16 .bin (--corpus, --out).",
    )
    add_shard_arguments(parser)
    parser.add_argument(
        "--corpus", choices=["pydoc", "stdlib", "files"], help="which byte-level corpus to read"
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        default=None,
        help="for --corpus files: text files, folders (recursive) or globs",
    )
    parser.add_argument("--out", type=Path, help="output file, must end in .bin")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="if > 0, write the last fraction of tokens to FILE.val.bin and the rest to FILE.bin (default: 0, one file)",
    )
    parser.add_argument(
        "--max-bytes", type=int, default=None, help="keep only the first N bytes of the corpus"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.input is not None:
        return main_shards(parser, args)
    if args.corpus is None or args.out is None:
        parser.error("give --input and --out-dir (token shards), or --corpus and --out (a .bin)")
    if args.out.suffix != ".bin":
        parser.error(f"--out must end in .bin, got {args.out}")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    try:
        tokens = load_corpus(args.corpus, args.paths, args.max_bytes)
        if args.val_fraction > 0:
            train, val = split_train_val(tokens, args.val_fraction)
            outputs = [(args.out, train), (val_path_for(args.out), val)]
        else:
            outputs = [(args.out, tokens)]
        written = [(path, write_bin(part, path)) for path, part in outputs]
    except (ValueError, OSError) as e:
        print(f"moe-swarm-prepare: error: {e}", file=sys.stderr)
        sys.exit(1)

    print(f"corpus: {args.corpus}{' ' + ' '.join(args.paths) if args.paths else ''}")
    print(f"tokens: {tokens.numel()} (byte-level, vocab 264)")
    for path, count in written:
        print(f"wrote {path} ({count} tokens, {path.stat().st_size} bytes, uint16)")
    bins = f"data=bin data.bin_path={written[0][0]}"
    if len(written) == 2:
        bins += f" data.val_bin_path={written[1][0]}"
    print(f"train on it: moe-swarm-train experiment=quickstart {bins}")


def main_shards(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.out_dir is None or args.workers < 1 or args.shard_mb <= 0:
        parser.error("--input needs --out-dir, --workers >= 1 and --shard-mb > 0")
    try:
        result = prepare_from_args(args)
    except (UserError, ValueError, OSError) as e:
        print(f"moe-swarm-prepare: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(result.summary(args.out_dir))
    print(f"train on it: moe-swarm-train experiment=quickstart data=tokens data.path={args.out_dir}")


if __name__ == "__main__":
    main()
