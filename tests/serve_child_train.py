"""A small stand-in for the training child, for job-manager tests: a real process with real files.

Takes Hydra-style ``key=value`` arguments like ``python -m moe_swarm.cli.train``: ``run_id``, ``paths.runs_dir``
and ``fake.*`` knobs (steps, step_s, crash_at, ignore_sigterm). Prints progress and ``MOE_SWARM_METRICS``
lines, writes a real tiny model checkpoint to ``<run_dir>/checkpoints/last.ckpt`` every other step and on
SIGTERM (then exits 143, like training), and ``summary.json`` at the end.
"""

import json
import signal
import sys
import time
from pathlib import Path

args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("hydra."))
args = {
    k: v[1:-1].replace("\\'", "'") if v[:1] == v[-1:] == "'" else v for k, v in args.items()
}  # Hydra quoting
steps = int(args.get("fake.steps", 4))
step_s = float(args.get("fake.step_s", 0.02))
crash_at = int(args.get("fake.crash_at", -1))
run_dir = Path(args["paths.runs_dir"]) / args["run_id"]
ckpt = run_dir / "checkpoints" / "last.ckpt"
stop = {"flag": False}

if args.get("fake.ignore_sigterm") == "true":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))

from serve_helpers import tiny_checkpoint  # noqa: E402  (after the handler: imports take a while)

print(f"fake training {args.get('experiment')} run {args['run_id']} for {steps} steps", flush=True)
for step in range(1, steps + 1):
    time.sleep(step_s)
    print(f"step {step}", flush=True)
    print(
        "MOE_SWARM_METRICS " + json.dumps({"train/loss": 1.0 / step, "trainer/global_step": step}), flush=True
    )
    if step == crash_at:
        raise RuntimeError(f"synthetic crash at step {step}")
    if step % 2 == 0:
        tiny_checkpoint(ckpt, seed=step)
        print(f"saved {ckpt} at step {step}", flush=True)
    if stop["flag"]:
        tiny_checkpoint(ckpt, seed=step)
        print(f"SIGTERM: saved {ckpt} at step {step}; stopping", flush=True)
        sys.exit(143)
tiny_checkpoint(ckpt, seed=steps)
(run_dir / "summary.json").write_text(
    json.dumps(
        {"run_id": args["run_id"], "checkpoint": str(ckpt), "metrics": {"val/loss": 0.5, "note": "text"}}
    )
)
print("done", flush=True)
