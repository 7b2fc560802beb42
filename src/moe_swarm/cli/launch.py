"""`moe-swarm-launch`: print the Kubernetes Job for a training run (pipe it to ``kubectl apply -f -``).

    moe-swarm-launch --overlay gpu --image REGISTRY/moe-swarm:TAG experiment=X trainer.num_nodes=4 \\
        | kubectl apply -f -
    moe-swarm-launch --overlay cpu --sweep --name lr experiment=quickstart module.optimizer.lr=1e-3,3e-3

Rendering lives in :mod:`moe_swarm.scale.k8s` (through the fly/k8s Kustomize tree, the one source of the
manifests); this module parses the command line.
"""

from __future__ import annotations

import argparse
import sys

from moe_swarm.scale.k8s import (
    DEFAULT_IMAGE,
    DEFAULT_JOB_NAME,
    OVERLAYS,
    LaunchError,
    compose_counts,
    expand_sweep,
    override_key,
    render_jobs,
)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="moe-swarm-launch",
        description="Print the Kubernetes Job for a moe-swarm training run (pipe it to `kubectl apply -f -`).",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for moe-swarm-train")
    parser.add_argument(
        "--overlay", choices=OVERLAYS, required=True, help="target: cpu, gpu or fks (Fly Kubernetes)"
    )
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"container image (default: {DEFAULT_IMAGE})")
    parser.add_argument("--name", default=DEFAULT_JOB_NAME, help=f"job name (default: {DEFAULT_JOB_NAME})")
    parser.add_argument("--namespace", default=None, help="Kubernetes namespace for every object")
    parser.add_argument(
        "--run-id", default=None, help="run id (default: the job name): a re-applied job resumes"
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=None,
        help="run torchrun (c10d rendezvous) in each pod, restarting the ranks up to N times from the last "
        "checkpoint (cluster=torchelastic); default: the plain Indexed Job",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="expand Hydra sweep syntax (a=1,2 b=x,y) into one job per trial, named <name>-<i>",
    )
    return parser.parse_args(argv)


def _trials(args: argparse.Namespace) -> list[tuple[str, int, int, list[str], str]]:
    trials = []
    for index, overrides in enumerate(expand_sweep(args.overrides) if args.sweep else [list(args.overrides)]):
        name = f"{args.name}-{index}" if args.sweep else args.name
        given = [o.split("=", 1)[1].strip() for o in overrides if override_key(o) == "run_id"]
        if args.run_id:
            run_id = f"{args.run_id}-{index}" if args.sweep else args.run_id
        else:
            run_id = given[-1] if given else name
        overrides = [o for o in overrides if override_key(o) != "run_id"]
        num_nodes, devices = compose_counts(overrides, args.overlay)
        trials.append((name, num_nodes, devices, overrides, run_id))
    return trials


def main(argv: list[str] | None = None) -> int:
    """Console script: print the manifests; 2 with a one-line reason on a bad request."""
    from hydra.errors import HydraException

    args = _parse_args(argv)
    try:
        sys.stdout.write(
            render_jobs(_trials(args), args.image, args.overlay, args.namespace, args.max_restarts)
        )
    except (LaunchError, HydraException) as error:
        print(f"moe-swarm-launch: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
