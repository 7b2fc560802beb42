"""Suite ``hf``: import and export of a Mixtral-shaped Hugging Face checkpoint, ours vs transformers.

A random checkpoint with Mixtral-8x7B's real layer sizes (d_model 4096, expert d_ff 14336, 32 heads,
8 kv heads, vocabulary 32000) but few layers and experts, about 2.1 GB in bf16, is written once; then
``moe_swarm.hf.load_hf_model`` + ``export_model`` and transformers' ``from_pretrained`` +
``save_pretrained`` each run in a child process of their own, so their peak RSS (``VmHWM``, reset
between import and export through ``/proc/self/clear_refs``) is theirs alone. Dirty pages are flushed
(``os.sync``, untimed) before each timed step, so neither side pays for the other's writes. ``--quick``
uses a small model of the same family.

Each side runs ``repeats`` times (3 full, 1 quick), alternating which goes first; rows are medians.
Rows per case: ``import_s`` / ``export_s`` (reference: transformers' seconds), the per-round ratios
``import_over_transformers`` / ``export_over_transformers`` (goal <= 1), ``import_peak_rss_gb`` /
``export_peak_rss_gb`` (reference: transformers' peak), and ``import_rss_over_checkpoint`` (peak RSS
above the child's baseline after its imports, over the checkpoint's bytes; the goal is <= 1.25).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moe_swarm.bench.context import BenchContext, Case, SuiteUnavailable
from moe_swarm.bench.results import Row

SUITE = "hf"
# Mixtral-8x7B's sizes with 2 layers of 2 experts: ~2.1 GB in bf16.
FULL = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=2,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_local_experts=2,
    num_experts_per_tok=2,
)
QUICK = {**FULL, "vocab_size": 2048, "hidden_size": 256, "intermediate_size": 512}
QUICK.update(num_attention_heads=4, num_key_value_heads=2, num_local_experts=4)
SIDES = ("ours", "transformers")


def case_name(shape: dict) -> str:
    s = shape
    return (
        f"mixtral_L{s['num_hidden_layers']}_E{s['num_local_experts']}_d{s['hidden_size']}"
        f"_ff{s['intermediate_size']}"
    )  # always bf16 (config "dtype"); no "_bf16" suffix, which names bf16-compute cases


def cases(ctx: BenchContext) -> list[Case]:
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise SuiteUnavailable(f"transformers is not installed ({exc}); pip install -e '.[dev]'") from None
    shape = QUICK if ctx.quick else FULL
    return [Case(SUITE, case_name(shape), lambda: run(ctx, shape))]


def _memory() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _child(side: str, folder: str, out: str) -> dict:
    """Runs in the child: import then export on one side, each timed with its peak RSS."""
    import torch

    if side == "transformers":
        import transformers

        def load():
            return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)

        def save(model):
            model.save_pretrained(out)
    else:
        from moe_swarm.hf import export_model, load_hf_model

        def load():
            return load_hf_model(folder)[0]

        def save(model):
            export_model(model, out, {"model_type": "mixtral"})

    result = {}
    os.sync()
    base, _ = _memory()
    t0 = time.perf_counter()
    model = load()
    result["import_s"] = time.perf_counter() - t0
    result["import_base"], result["import_peak"] = base, _memory()[1]
    result["peak_reset"] = _reset_peak()
    os.sync()  # untimed: neither side pays for dirty pages an earlier step left to write back
    base, _ = _memory()
    t0 = time.perf_counter()
    save(model)
    result["export_s"] = time.perf_counter() - t0
    result["export_base"], result["export_peak"] = base, _memory()[1]
    return result


def _write_checkpoint(shape: dict, folder: Path) -> int:
    """A random bf16 Mixtral checkpoint (per-expert layout, as published) at ``folder``; its bytes."""
    import torch

    from moe_swarm.hf import config_from_hf, export_model
    from moe_swarm.model import MoETransformer

    cfg = config_from_hf({"model_type": "mixtral", "max_position_embeddings": 4096, **shape})
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = MoETransformer(cfg)
    finally:
        torch.set_default_dtype(previous)
    export_model(model, folder, {"model_type": "mixtral"}, max_shard_bytes=2**30)
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _spawn(ctx: BenchContext, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(ctx.threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "moe_swarm.bench.hf_suite", *args], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"hf suite child {args[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(ctx: BenchContext, shape: dict) -> list[Row]:
    name = case_name(shape)
    repeats = ctx.repeats_or(3, 1)
    rounds: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="moe-swarm-bench-hf-") as tmp:
        folder = Path(tmp) / "checkpoint"
        nbytes = _spawn(ctx, "write", json.dumps(shape), str(folder))["bytes"]
        for r in range(repeats):  # sides alternate, and each round swaps who goes first
            for side in SIDES if r % 2 == 0 else tuple(reversed(SIDES)):
                out = Path(tmp) / f"out_{side}"
                rounds[side].append(_spawn(ctx, side, str(folder), str(out)))
                shutil.rmtree(out, ignore_errors=True)

    def med(side: str, key: str) -> float:
        return statistics.median([m[key] for m in rounds[side]])

    def over(side: str, phase: str) -> float:
        return statistics.median(
            [max(m[f"{phase}_peak"] - m[f"{phase}_base"], 4096) / nbytes for m in rounds[side]]
        )

    config = {
        **shape,
        "dtype": "bfloat16",
        "checkpoint_bytes": nbytes,
        "repeats": repeats,
        "peak_reset": all(m["peak_reset"] for side in SIDES for m in rounds[side]),
    }
    gb = 2**30

    def row(metric: str, mine: float, theirs: float, unit: str, ref_metric: str, **kw) -> Row:
        return ctx.row(SUITE, f"{name}/{metric}", mine, unit, reference=f"{SUITE}/{name}/{ref_metric}",
                       reference_value=theirs, higher_is_better=False, config=config, **kw)  # fmt: skip

    ratios = {  # per round, ours over transformers in the same round
        phase: [o[f"{phase}_s"] / t[f"{phase}_s"] for o, t in zip(rounds["ours"], rounds["transformers"])]
        for phase in ("import", "export")
    }
    return [
        row("import_s", med("ours", "import_s"), med("transformers", "import_s"), "s", "transformers_from_pretrained_s"),
        row("export_s", med("ours", "export_s"), med("transformers", "export_s"), "s", "transformers_save_pretrained_s"),
        row("import_over_transformers", statistics.median(ratios["import"]), 1.0, "x", "transformers_from_pretrained", samples=ratios["import"]),
        row("export_over_transformers", statistics.median(ratios["export"]), 1.0, "x", "transformers_save_pretrained", samples=ratios["export"]),
        row("import_peak_rss_gb", med("ours", "import_peak") / gb, med("transformers", "import_peak") / gb, "GiB", "transformers_import_peak_rss_gb"),
        row("export_peak_rss_gb", med("ours", "export_peak") / gb, med("transformers", "export_peak") / gb, "GiB", "transformers_export_peak_rss_gb"),
        row("import_rss_over_checkpoint", over("ours", "import"), over("transformers", "import"), "x", "transformers_import_rss_over_checkpoint"),
        row("export_rss_over_checkpoint", over("ours", "export"), over("transformers", "export"), "x", "transformers_export_rss_over_checkpoint"),
    ]  # fmt: skip


def main(argv: list[str]) -> None:
    """Child entry: ``write SHAPE_JSON FOLDER`` or ``ours|transformers FOLDER OUT``; prints one JSON line."""
    if argv[0] == "write":
        print(json.dumps({"bytes": _write_checkpoint(json.loads(argv[1]), Path(argv[2]))}))
    else:
        print(json.dumps(_child(argv[0], argv[1], argv[2])))


if __name__ == "__main__":
    main(sys.argv[1:])
