"""Child process for tests/test_parallel*.py and the parallel bench: one rank of a gloo run on CPU.

Started with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT in the environment (by the tests, or by
torchrun); ``--world 1`` runs the single-process reference without a process group. Modes:
- ``ep_layer``: one MoE layer with expert parallelism; output, input/router/expert gradients.
- ``train``: the tiny MoE LM, parallelized (FSDP2, + EP with --ep > 1), AdamW with clipping on
  a fixed global batch split over ranks; optional sharded save/resume; writes the full final state.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from moe_swarm.model.config import MoEConfig, RouterConfig
from moe_swarm.model.moe import MoELayer
from moe_swarm.model.transformer import MoETransformer, TransformerConfig
from moe_swarm.scale.parallel import (
    ExpertParallelPool,
    ParallelConfig,
    build_mesh,
    clip_grad_norm_,
    parallelize,
)
from moe_swarm.store.sharded import full_model_state, load_sharded, save_sharded

TINY = dict(d_model=32, n_layers=2, n_heads=2, max_seq_len=16, d_ff=32, num_experts=4, top_k=2)
GLOBAL_BATCH, SEQ = 4, 12


def tiny_config(**overrides) -> TransformerConfig:
    flat = {**TINY, **overrides}
    from_dict = getattr(TransformerConfig, "from_dict", None)
    return from_dict(flat) if from_dict is not None else TransformerConfig(**flat)


def moe_config(num_experts: int, granularity: int = 1, shared: int = 0) -> MoEConfig:
    return MoEConfig(
        num_experts=num_experts,
        d_ff=16,
        granularity=granularity,
        num_shared_experts=shared,
        router=RouterConfig(mode="sigmoid_bias", top_k=2),
    )


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    data = torch.randint(0, 256, (GLOBAL_BATCH, SEQ + 1), generator=g)
    return data[:, :-1], data[:, 1:]


def loss_of(model: MoETransformer, idx: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    out = model(idx, tgt)
    return out.loss + 1e-2 * out.load_balance_loss + 1e-3 * out.z_loss


def ep_layer(args, rank: int, world: int) -> dict:
    torch.manual_seed(0)
    layer = MoELayer(16, moe_config(args.experts, args.granularity, args.shared))
    if args.no_tokens:  # experts of the last rank are never chosen: that rank receives zero rows
        layer.router.bias[args.experts // 2 :] = -100.0
    ref = MoELayer(16, moe_config(args.experts, args.granularity, args.shared))
    ref.load_state_dict(layer.state_dict())
    x_all = torch.randn(world, 3, 5, 16, generator=torch.Generator().manual_seed(1))
    g_all = torch.randn(world, 3, 5, 16, generator=torch.Generator().manual_seed(2))
    cfg = ParallelConfig(expert_parallel_size=world)
    cfg.check(world, layer.experts.num_experts)  # the clear error for a non-dividing expert count
    mesh = build_mesh(cfg, "cpu", world)
    layer.experts = ExpertParallelPool(layer.experts, mesh.ep)
    # --autocast: bf16 autocast as under trainer.precision=bf16-mixed (the expert GEMMs run in bf16).
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast)
    x = x_all[rank].clone().requires_grad_(True)
    with amp:
        y, _ = layer(x)
        (y.float() * g_all[rank]).sum().backward()
    # Gather everything and compare on rank 0 with the one-process layer on all tokens.
    ys = [torch.empty_like(y) for _ in range(world)]
    dist.all_gather(ys, y.detach())
    xg = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(xg, x.grad)
    router_grad = layer.router.weight.grad.clone()
    dist.all_reduce(router_grad)
    expert_grads = {n: getattr(layer.experts, n).grad.full_tensor() * world for n in ("w1", "w2", "w3")}
    if rank != 0:
        return {}
    xr = x_all.reshape(world * 3, 5, 16).clone().requires_grad_(True)
    with amp:
        yr, _ = ref(xr)
        (yr.float() * g_all.reshape(world * 3, 5, 16)).sum().backward()
    err = {
        "output": (torch.cat(ys) - yr.detach()).abs().max().item(),
        "input_grad": (torch.cat(xg) - xr.grad).abs().max().item(),
        "router_grad": (router_grad - ref.router.weight.grad).abs().max().item(),
    }
    for n, gr in expert_grads.items():
        err[f"{n}_grad"] = (gr - getattr(ref.experts, n).grad).abs().max().item()
    with torch.no_grad():  # how far the same layer in fp32 is: > 0 shows the autocast run was bf16
        y32 = ref(xr.detach())[0].float()
        fp32_gap = ((y32 - yr.detach().float()).abs().max() / y32.abs().max()).item()  # relative
    counts = torch.zeros(layer.experts.num_experts)
    with torch.no_grad():
        routed = ref.router(xr.detach().reshape(-1, 16))
        counts.scatter_add_(0, routed.indices.reshape(-1), torch.ones(routed.indices.numel()))
    return {"max_abs_err": err, "tokens_per_expert": counts.tolist(), "fp32_gap": fp32_gap}


def train(args, rank: int, world: int) -> dict:
    torch.manual_seed(0)
    model = MoETransformer(tiny_config())
    if world > 1:
        parallelize(model, None, ParallelConfig(expert_parallel_size=args.ep))
    if args.optim == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, foreach=False)
    start = 0
    if args.resume_from:
        start = int(load_sharded(args.resume_from, model, opt)["global_step"])
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    ckpt_root = Path(args.ckpt_root) if args.ckpt_root else None
    if ckpt_root is not None and (ckpt_root / "latest").is_file():  # elastic restart: newest complete save
        latest = ckpt_root / (ckpt_root / "latest").read_text().strip()
        start = int(load_sharded(latest, model, opt)["global_step"])
    losses = []
    for step in range(start, args.steps):
        if args.kill_at is not None and step == args.kill_at and rank == world - 1 and restarts == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # a rank dies mid-run
        idx, tgt = batch(step)
        if world > 1:
            per = GLOBAL_BATCH // world
            loss = loss_of(model, idx[rank * per : (rank + 1) * per], tgt[rank * per : (rank + 1) * per])
            loss.backward()
        else:  # the data-parallel objective in one process: the mean of the per-shard losses
            shards = args.ref_shards
            per = GLOBAL_BATCH // shards
            loss = (
                sum(
                    loss_of(model, idx[r * per : (r + 1) * per], tgt[r * per : (r + 1) * per])
                    for r in range(shards)
                )
                / shards
            )
            loss.backward()
        if world > 1:
            clip_grad_norm_(model.parameters(), 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        done = step + 1
        if args.save_at is not None and done == args.save_at:
            save_sharded(args.save_dir, model, opt, meta=_meta(done))
            saved_state = full_model_state(model) if world > 1 else model.state_dict()
            if rank == 0:  # the full state that was saved, next to the folder
                torch.save(saved_state, f"{args.save_dir}.pt")
        if ckpt_root is not None:
            name = f"step{done}"
            save_sharded(ckpt_root / name, model, opt, meta=_meta(done))
            if rank == 0:
                tmp = ckpt_root / "latest.tmp"
                tmp.write_text(name)
                tmp.replace(ckpt_root / "latest")
            if world > 1:
                dist.barrier()
    state = (
        full_model_state(model)
        if world > 1
        else {k: v.detach().clone() for k, v in model.state_dict().items()}
    )
    if rank == 0 and args.state_out:
        torch.save(state, args.state_out)
    return {"losses": losses, "start": start, "restarts": restarts}


def _meta(step: int) -> dict:
    return {"global_step": step, "epoch": 0, "hyper_parameters": {"model": tiny_config().to_dict()}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["ep_layer", "train"])
    p.add_argument("--world", type=int, default=int(os.environ.get("WORLD_SIZE", "1")))
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--no-tokens", action="store_true")
    p.add_argument("--granularity", type=int, default=1)
    p.add_argument("--shared", type=int, default=0)
    p.add_argument("--autocast", action="store_true")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--optim", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--ref-shards", type=int, default=1)
    p.add_argument("--save-at", type=int)
    p.add_argument("--save-dir")
    p.add_argument("--resume-from")
    p.add_argument("--ckpt-root")
    p.add_argument("--kill-at", type=int)
    p.add_argument("--state-out")
    p.add_argument("--result")
    args = p.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    world = args.world
    if world > 1:
        dist.init_process_group("gloo")
    try:
        result = ep_layer(args, rank, world) if args.mode == "ep_layer" else train(args, rank, world)
        if rank == 0 and args.result:
            Path(args.result).write_text(json.dumps(result))
    finally:
        if world > 1:
            dist.barrier()  # nobody tears gloo down while a peer still talks to it (exit-time aborts)
            dist.destroy_process_group()
    # Work done and the group destroyed: leave without interpreter finalization. About 1 run in 10 of
    # the EP tests under pytest ended in "terminate called without an active exception": a gloo worker
    # thread of a sub-group the mesh still references destroys a finished all-gather (whose tensors
    # hold Python references) while Python finalizes; its GIL acquire then exits the thread through
    # a noexcept destructor (core dump backtrace; pytorch/pytorch#179291). An error above still raises.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
