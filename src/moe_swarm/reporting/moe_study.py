"""The MoE-vs-dense study: dense vs routed LMs at equal active parameters and equal tokens.

    python -m moe_swarm.reporting.moe_study run --out runs/moe-study       # grid + report (make moe-study)
    python -m moe_swarm.reporting.moe_study report --out runs/moe-study    # report what has finished
    python -m moe_swarm.reporting.moe_study stepcost --out runs/moe-study  # step cost, one process

``run`` writes the study corpus (CPython's pydoc topics = prose and stdlib sources = code, cut into
4 KiB chunks and shuffled with a fixed seed, so train and validation hold both), then trains every
variant x seed with ``moe-swarm-train experiment=moe_study`` (``jobs`` at a time, one thread each;
a finished run is skipped), then reports. The report re-evaluates every final checkpoint on the same
validation windows: per-window bits per byte (for the paired bootstrap over seeds and windows) and
tokens per expert by source (specialisation). Same seed = same init order and data order for every
variant, so seeds pair.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from moe_swarm.atomic import atomic_write_text
from moe_swarm.data.corpora import load_corpus, read_bin, write_bin
from moe_swarm.model.config import TransformerConfig
from moe_swarm.model.transformer import MoETransformer
from moe_swarm.reporting.moe_study_render import SOURCES, markdown, plots
from moe_swarm.store.checkpoint import load_model
from moe_swarm.swarm.statistics import two_level_bootstrap_ci

CHUNK = 4096


@dataclass(frozen=True)
class Variant:
    """One arm: its total expert count E (0 = dense) and the model overrides giving it."""

    name: str
    experts: int
    overrides: tuple[str, ...] = ()
    shared: int = 0
    granularity: int = 1
    route_scale: float = 1.0
    cost: float = 1.0  # step cost relative to dense (measured), for scheduling only


# Active FFN width 256 everywhere: dense d_ff 256 = top-2 x 128 = top-4 x 64 = ... = 3 x 64 + 64 shared.
GRID = (
    Variant("dense", 0, ("model.ffn=dense",)),
    Variant("E4", 4, ("model.moe.num_experts=4",), cost=1.1),
    Variant("E8", 8, (), cost=1.15),
    Variant("E16-g2", 16, ("model.moe.granularity=2",), granularity=2, cost=1.1),
    Variant("E32-g4", 32, ("model.moe.granularity=4",), granularity=4, cost=1.5),
    Variant("E64-g8", 64, ("model.moe.granularity=8",), granularity=8, cost=2.0),
    # Fine-grained with the combine weights scaled by g: each coarse expert's g pieces then carry its
    # whole weight (renormalised top-k*g weights are ~1/g of the coarse ones), as in a
    # function-preserving split; the layer's output at init is g times larger than without.
    *(
        Variant(
            f"E{8 * g}-g{g}-rs{g}",
            8 * g,
            (f"model.moe.granularity={g}", f"model.moe.router.route_scale={g}.0"),
            granularity=g,
            route_scale=g,
            cost=c,
        )
        for g, c in ((2, 1.1), (4, 1.5), (8, 2.0))
    ),
    Variant(
        "E16-s1",
        16,
        (
            "model.moe.num_experts=16",
            "model.moe.d_ff=64",
            "model.moe.router.top_k=3",
            "model.moe.num_shared_experts=1",
        ),
        shared=1,
        cost=1.15,
    ),
    Variant(
        "E64-s1",
        64,
        (
            "model.moe.num_experts=64",
            "model.moe.d_ff=16",
            "model.moe.router.top_k=15",
            "model.moe.num_shared_experts=1",
        ),
        shared=1,
        cost=2.0,
    ),
)
# Only in the step-cost comparison: 64 coarse experts (d_ff 128, top-2, 8x the total of E8).
COARSE_E64 = Variant("E64-coarse", 64, ("model.moe.num_experts=64",))
SMOKE_GRID = (
    GRID[0],
    Variant("E8-g2", 8, ("model.moe.num_experts=4", "model.moe.granularity=2"), granularity=2),
)
SMOKE_ARGS = (
    "model.d_model=16",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.max_seq_len=32",
    "model.moe.d_ff=16",
    "data.block_size=32",
    "data.batch_size=4",
    "data.val_windows=4",
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "callbacks.expert_load.enabled=false",
    "callbacks.loss_curve.enabled=false",
)


# ---- corpus -----------------------------------------------------------------------------------
def write_corpus(out: Path, max_code_bytes: int = 1_000_000, seed: int = 0) -> Path:
    """The study's byte corpus and each chunk's source and start (``corpus_sources.json``); kept
    when present, so every run and the report read the same bytes."""
    path, meta = out / "corpus.bin", out / "corpus_sources.json"
    if path.is_file() and meta.is_file():
        return path
    parts = (load_corpus("pydoc"), load_corpus("stdlib", max_bytes=max_code_bytes))
    chunks = [(s, t[i : i + CHUNK]) for s, t in enumerate(parts) for i in range(0, t.numel(), CHUNK)]
    order = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(seed)).tolist()
    chunks = [chunks[i] for i in order]
    starts = torch.tensor([0] + [c.numel() for _, c in chunks[:-1]]).cumsum(0).tolist()
    out.mkdir(parents=True, exist_ok=True)
    write_bin(torch.cat([c for _, c in chunks]), path)
    atomic_write_text(
        meta, json.dumps({"sources": list(SOURCES), "chunks": [s for s, _ in chunks], "starts": starts})
    )
    return path


# ---- running ----------------------------------------------------------------------------------
def run_id(v: Variant, seed: int) -> str:
    return f"moe-study-{v.name}-s{seed}"


def train_command(v: Variant, seed: int, corpus: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "moe_swarm.cli.train",
        "experiment=moe_study",
        f"seed={seed}",
        f"run_id={run_id(v, seed)}",
        f"data.bin_path={corpus}",
        "trainer.enable_progress_bar=false",
        "threads=1",
        *v.overrides,
        *extra,
    ]


def run_grid(
    out: Path, grid: tuple[Variant, ...], seeds: list[int], jobs: int, extra: tuple[str, ...]
) -> None:
    """Train every (variant, seed) not finished yet, ``jobs`` at a time; seed by seed (so a partial
    study holds whole seeds), dearest variant first within a seed."""
    corpus = write_corpus(out)
    runs = out / "runs"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MOE_SWARM_RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1"}
    env.pop("RUN_ID", None)
    todo = [
        (v, s)
        for s in seeds
        for v in sorted(grid, key=lambda v: -v.cost)
        if not (runs / run_id(v, s) / "summary.json").is_file()
    ]
    active: list[tuple[subprocess.Popen, str, float]] = []
    failed = []
    while todo or active:
        while todo and len(active) < jobs:
            v, s = todo.pop(0)
            log = (out / "logs" / f"{run_id(v, s)}.log").open("w")
            proc = subprocess.Popen(
                train_command(v, s, corpus, extra), stdout=log, stderr=subprocess.STDOUT, env=env
            )
            active.append((proc, run_id(v, s), time.time()))
            print(f"[moe-study] started {run_id(v, s)}", flush=True)
        time.sleep(0.5)
        for item in list(active):
            proc, rid, t0 = item
            if proc.poll() is not None:
                active.remove(item)
                print(f"[moe-study] {rid} exit {proc.returncode} after {time.time() - t0:.0f} s", flush=True)
                if proc.returncode != 0:
                    failed.append(rid)
    if failed:
        raise SystemExit(f"runs failed (logs in {out / 'logs'}): {', '.join(failed)}")


# ---- evaluation -------------------------------------------------------------------------------
def val_windows(
    out: Path, tokens: torch.Tensor, val_fraction: float, block: int, n: int
) -> tuple[list[int], list[int]]:
    """Evenly spaced validation windows (absolute starts) and each one's source."""
    n_val = round(tokens.numel() * val_fraction)
    base = tokens.numel() - n_val
    starts = torch.linspace(0, n_val - block - 1, n).long().add(base).tolist()
    meta = json.loads((out / "corpus_sources.json").read_text())
    chunk = torch.searchsorted(torch.tensor(meta["starts"]), torch.tensor(starts), right=True) - 1
    return starts, [meta["chunks"][i] for i in chunk.tolist()]


@torch.no_grad()
def evaluate(
    model: MoETransformer, tokens: torch.Tensor, starts: list[int], src: list[int], block: int
) -> dict:
    """Per-window bits per byte, and per (MoE layer, source) tokens per expert."""
    model.eval()
    bpb: list[float] = [0.0] * len(starts)
    counts: dict[int, torch.Tensor] = {}
    for s in range(len(SOURCES)):
        idx = [i for i, x in enumerate(src) if x == s]
        for b in range(0, len(idx), 32):
            part = idx[b : b + 32]
            x = torch.stack([tokens[starts[i] : starts[i] + block + 1].long() for i in part])
            out = model(x[:, :-1])
            ce = F.cross_entropy(out.logits.transpose(1, 2), x[:, 1:], reduction="none").mean(1)
            for i, v in zip(part, (ce / math.log(2)).tolist()):
                bpb[i] = v
            if out.aux:
                c = torch.stack([a.counts for a in out.aux])
                counts[s] = counts.get(s, torch.zeros_like(c)) + c
    return {"bpb": bpb, "counts": {SOURCES[s]: c.tolist() for s, c in counts.items()}}


def specialisation(counts: dict[str, list]) -> float | None:
    """Mean over layers of the total-variation distance between the sources' expert shares (0 = none)."""
    if len(counts) < 2:
        return None
    a, b = (torch.tensor(counts[s], dtype=torch.float64) for s in SOURCES)
    pa, pb = a / a.sum(1, keepdim=True).clamp_min(1), b / b.sum(1, keepdim=True).clamp_min(1)
    return float(0.5 * (pa - pb).abs().sum(1).mean())


def health(counts: dict[str, list]) -> dict:
    """Validation load: dead experts (no token), coefficient of variation, max/mean (layer means)."""
    c = sum(torch.tensor(v, dtype=torch.float64) for v in counts.values())
    cv = c.std(1, correction=0) / c.mean(1).clamp_min(1e-9)
    return {
        "dead": int((c == 0).sum()),
        "cv": float(cv.mean()),
        "max_over_mean": float((c.amax(1) / c.mean(1).clamp_min(1e-9)).mean()),
    }


def collect(out: Path, grid: tuple[Variant, ...], seeds: list[int], windows: int) -> dict:
    """Every finished run's summary numbers and evaluation (cached in each run folder)."""
    tokens = read_bin(out / "corpus.bin")
    rows = {}
    for v in grid:
        for s in seeds:
            folder = out / "runs" / run_id(v, s)
            summary_path = folder / "summary.json"
            if not summary_path.is_file():
                continue
            summary = json.loads(summary_path.read_text())
            cache = folder / "study_eval.json"
            if cache.is_file():
                ev = json.loads(cache.read_text())
            else:
                model, hp = load_model(summary["checkpoint"])
                data = hp["run_config"]["data"]
                block = int(data["block_size"])
                starts, src = val_windows(out, tokens, float(data["val_fraction"]), block, windows)
                ev = evaluate(model, tokens, starts, src, block)
                steps = int(hp["global_step"])
                n_tok = steps * int(data["batch_size"]) * block
                pc = model.count_parameters()
                ev.update(
                    tokens=n_tok,
                    flops=model.train_flops_per_token(block) * n_tok,
                    params_total=pc.total,
                    params_active=pc.active,
                    router_health_train=summary.get("metrics", {}).get("router/dead_experts"),
                )
                atomic_write_text(cache, json.dumps(ev))
            rows[(v.name, s)] = {
                "val_bpb": summary["metrics"].get("val/bpb"),
                "wall_s": summary["wall_seconds"],
                "tokens_per_s": summary.get("tokens_per_s"),
                **ev,
            }
    return rows


# ---- report -----------------------------------------------------------------------------------
def study(rows: dict, grid: tuple[Variant, ...], seeds: list[int], samples: int = 2000) -> list[dict]:
    """Per variant: mean val bpb over seeds, MoE - dense with a two-level (seeds, windows) bootstrap CI."""
    table = []
    for v in grid:
        have = [s for s in seeds if (v.name, s) in rows and (grid[0].name, s) in rows]
        if not have:
            continue
        r = [rows[(v.name, s)] for s in have]
        row = {
            "variant": v.name,
            "experts": v.experts,
            "granularity": v.granularity,
            "route_scale": v.route_scale,
            "shared": v.shared,
            "seeds": have,
            "val_bpb": [x["val_bpb"] for x in r],
            "window_bpb": statistics.mean(statistics.mean(x["bpb"]) for x in r),
            "wall_s": statistics.mean(x["wall_s"] for x in r),
            "tokens_per_s": statistics.mean(x["tokens_per_s"] or float("nan") for x in r),
            "tokens": r[0]["tokens"],
            "flops": r[0]["flops"],
            "params_total": r[0]["params_total"],
            "params_active": r[0]["params_active"],
        }
        if v.experts:
            dense = [rows[(grid[0].name, s)]["bpb"] for s in have]
            row["diff"] = two_level_bootstrap_ci([x["bpb"] for x in r], dense, samples=samples)
            row["specialisation"] = statistics.mean(specialisation(x["counts"]) or 0.0 for x in r)
            hs = [health(x["counts"]) for x in r]
            row["val_dead_experts"] = statistics.mean(h["dead"] for h in hs)
            row["val_load_cv"] = statistics.mean(h["cv"] for h in hs)
            row["val_max_over_mean"] = statistics.mean(h["max_over_mean"] for h in hs)
            row["train_dead_experts"] = [x.get("router_health_train") for x in r]
        table.append(row)
    return table


def report(out: Path, grid: tuple[Variant, ...], seeds: list[int], windows: int, samples: int) -> str:
    rows = collect(out, grid, seeds, windows)
    table = study(rows, grid, seeds, samples)
    sc_path = out / "stepcost.json"
    stepcost = json.loads(sc_path.read_text()) if sc_path.is_file() else None
    text = markdown(table, stepcost)
    atomic_write_text(out / "study.json", json.dumps({"table": table, "stepcost": stepcost}, indent=2))
    atomic_write_text(out / "study.md", text)
    if table:
        plots(table, rows, out)
    return text


# ---- step cost --------------------------------------------------------------------------------
def step_cost(
    out: Path,
    threads: int = 1,
    reps: int = 12,
    names: tuple[str, ...] = ("dense", "E8", "E64-g8", "E64-s1", "E64-coarse"),
) -> dict:
    """Median fwd+bwd+AdamW step time of each variant at the study's shape, interleaved in one process."""
    torch.set_num_threads(threads)
    base = dict(d_model=64, n_layers=4, n_heads=4, max_seq_len=128, moe=dict(num_experts=8, d_ff=128))
    models, opts = {}, {}
    for v in (v for v in (*GRID, COARSE_E64) if v.name in names):
        cfg = json.loads(json.dumps(base))
        for o in v.overrides:
            key, val = o.split("=")
            node = cfg
            *path, leaf = key.split(".")[1:]
            for p in path:
                node = node.setdefault(p, {})
            node[leaf] = val if not val.lstrip("-").isdigit() else int(val)
        torch.manual_seed(0)
        models[v.name] = MoETransformer(TransformerConfig.from_dict(cfg))
        opts[v.name] = torch.optim.AdamW(models[v.name].parameters(), lr=1e-3)
    x = torch.randint(0, 256, (16, 129), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(reps):
        for k, m in models.items():
            t0 = time.perf_counter()
            o = m(x[:, :-1], x[:, 1:])
            (o.loss + 0.01 * o.load_balance_loss).backward()
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(t[2:]) for k, t in times.items()}
    result = {
        "setup": f"torch.set_num_threads({threads}), batch 16 x 128 tokens, median of {reps - 2} interleaved steps",
        "variants": {k: {"ms": 1000 * v, "ratio": v / med["dense"]} for k, v in med.items()},
    }
    atomic_write_text(out / "stepcost.json", json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "report", "stepcost"))
    parser.add_argument("--out", type=Path, default=Path("runs/moe-study"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (one thread each)")
    parser.add_argument("--windows", type=int, default=256, help="validation windows for the bootstrap")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="a tiny grid (2 variants, tiny model, 3 steps)")
    parser.add_argument("--threads", type=int, default=1, help="stepcost: torch.set_num_threads")
    args, extra = parser.parse_known_args()
    grid = SMOKE_GRID if args.smoke else GRID
    extra = tuple(extra) + (SMOKE_ARGS if args.smoke else ())
    out = args.out.resolve()
    if args.command == "stepcost":
        print(json.dumps(step_cost(out, args.threads), indent=2))
        return
    if args.command == "run":
        run_grid(out, grid, args.seeds, args.jobs, extra)
    text = report(out, grid, args.seeds, 8 if args.smoke else args.windows, args.samples)
    print(text, f"written to {out}", sep="\n")


if __name__ == "__main__":
    main()
