"""One rank (gloo on CPU) of tests/test_hf_parallel_load.py: build the model of a HF folder on the meta
device, parallelize it (FSDP2, + EP), fill this rank's shards from the folder, and write what it read
and whether the gathered model equals a one-process import."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from moe_swarm.hf import load_hf_model
from moe_swarm.hf.importer import read_hf_config
from moe_swarm.hf.parallel_load import load_local_shards
from moe_swarm.model.transformer import MoETransformer
from moe_swarm.scale.parallel import ParallelConfig, parallelize
from moe_swarm.store.sharded import full_model_state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("result")
    parser.add_argument("--ep", type=int, nargs="+", default=[1])
    parser.add_argument("--world", type=int)  # run_ranks passes it; the process group knows it
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    _, cfg = read_hf_config(Path(args.folder))
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))  # what ModelParallelStrategy passes
    results = {}
    for ep in args.ep:
        with torch.device("meta"):
            model = MoETransformer(cfg)
        parallelize(model, mesh, ParallelConfig(expert_parallel_size=ep))
        read = load_local_shards(model, args.folder)
        full = full_model_state(model)
        result = {"rank": rank, "bytes_read": read}
        idx = torch.randint(0, cfg.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits = model(idx).logits  # collective: every rank runs the sharded forward
        if rank == 0:
            reference = load_hf_model(args.folder, torch.float32)[0]
            ref_state = reference.state_dict()
            result["keys_equal"] = sorted(full) == sorted(ref_state)
            result["bit_identical"] = all(torch.equal(full[k], ref_state[k]) for k in ref_state)
            with torch.no_grad():
                result["logits_gap"] = (logits - reference(idx).logits).abs().max().item()
        results[f"ep{ep}"] = result
    with open(f"{args.result}.{rank}", "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    main()
