"""`moe-swarm-ctl`: command-line client of the control sidecar.

    moe-swarm-ctl train quickstart trainer.max_steps=200 --wait
    moe-swarm-ctl list
    moe-swarm-ctl logs -f <job_id>
    moe-swarm-ctl cancel <job_id>
    moe-swarm-ctl bench --num-samples 3
    moe-swarm-ctl infer "The list type" --agents 8          # a text model: continues the text
    moe-swarm-ctl infer "321*54=" --model <job_id>           # a "mul" model: 123*45, digits reversed
    moe-swarm-ctl infer "The list" --stream --agents 1       # tokens as they are decoded
    moe-swarm-ctl sweep quickstart -p model.moe.num_experts=4,8 trainer.max_steps=50 --wait

The server address comes from --target or MOE_SWARM_TARGET (default 127.0.0.1:50051), the bearer token
from --token or MOE_SWARM_TOKEN, a CA certificate from --ca-cert or MOE_SWARM_CA_CERT. Exit status: 0 on
success, 1 when the server refused the request (the message says why), 3 when a waited-for job did not
succeed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import grpc

from moe_swarm.serve.client import Client, explain_details
from moe_swarm.serve.ctl_commands import build_parser
from moe_swarm.serve.ctl_sweep import add_sweep_commands


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(add_sweep_commands).parse_args(argv)
    client = Client(args.target, token=args.token, ca_cert=args.ca_cert, tls=args.tls, timeout=args.timeout)
    try:
        code = args.func(client, args)
        sys.stdout.flush()  # a closed pipe raises here, inside the handler below, not at exit
        return code
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {explain_details(e.code().name, e.details())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`moe-swarm-ctl list | head -2`): stop quietly, as Unix tools do. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the broken pipe
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
