"""``moe-swarm-convert``: Hugging Face MoE folders in and out.

    moe-swarm-convert from-hf DIR OUT.ckpt [--dtype bfloat16]   # a checkpoint training/serving loads
    moe-swarm-convert to-hf CKPT OUT_DIR [--max-shard-gb 5]     # a folder transformers loads

CKPT: a Lightning .ckpt, a sharded checkpoint folder (trainer=model_parallel), or a swarm.ckpt (the
generator is exported; its checker stays in the .ckpt).

Errors (:class:`moe_swarm.hf.HFError`, :class:`moe_swarm.store.checkpoint.CheckpointError`) are printed as
one line naming the file or key, with exit status 2; nothing partial is left at OUT.
"""

from __future__ import annotations

import argparse
import sys

import torch

from moe_swarm.hf import HFError, export_hf, import_hf
from moe_swarm.store.checkpoint import CheckpointError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-swarm-convert", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    src = sub.add_parser("from-hf", help="a Hugging Face folder -> a moe-swarm checkpoint (.ckpt)")
    src.add_argument("folder", help="folder with config.json and model.safetensors (or shards + index)")
    src.add_argument("out", help="checkpoint file to write")
    src.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast (default: keep the dtype)")
    dst = sub.add_parser("to-hf", help="a moe-swarm checkpoint -> a Hugging Face folder")
    dst.add_argument("ckpt", help="a .ckpt file or a sharded checkpoint folder")
    dst.add_argument("out", help="folder to create (must not exist)")
    dst.add_argument("--max-shard-gb", type=float, default=5.0, help="split the weights above this size")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    notes: list[str] = []
    try:
        if args.command == "from-hf":
            out = import_hf(args.folder, args.out, DTYPES.get(args.dtype) if args.dtype else None)
        else:
            out = export_hf(args.ckpt, args.out, int(args.max_shard_gb * 2**30), notes)
    except (HFError, CheckpointError) as exc:
        print(f"moe-swarm-convert: error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"moe-swarm-convert: note: {note}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
