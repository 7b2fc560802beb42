"""Regenerate the committed gRPC modules from ``proto/mcp.proto`` (``python -m moe_swarm.serve.codegen``).

The proto is compiled with ``-I <src>`` and the path ``moe_swarm/serve/proto/mcp.proto`` so the generated
``mcp_pb2_grpc.py`` imports ``moe_swarm.serve.proto.mcp_pb2`` with no post-processing. Needs the dev
dependency ``grpcio-tools``; the test suite regenerates into a temporary folder and compares byte for byte.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SRC_ROOT = Path(__file__).resolve().parents[2]
PROTO_REL = "moe_swarm/serve/proto/mcp.proto"
GENERATED = ("mcp_pb2.py", "mcp_pb2_grpc.py", "mcp_pb2.pyi")


def generate(out_root: Path, src_root: Path = SRC_ROOT) -> list[Path]:
    """Compile the proto into ``out_root`` (mirroring the package layout); returns the generated files."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - dev dependency
        raise RuntimeError(
            "grpcio-tools is needed to regenerate the gRPC code: pip install grpcio-tools"
        ) from exc
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{src_root}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(Path(src_root) / PROTO_REL),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}: {' '.join(args)}")
    out_dir = out_root / Path(PROTO_REL).parent
    return [out_dir / name for name in GENERATED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SRC_ROOT, help="output root (default: the src folder)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
