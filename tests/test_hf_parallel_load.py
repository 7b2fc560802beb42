"""Under trainer=model_parallel each rank reads only the slices it holds: two gloo ranks build an
imported Mixtral on the meta device, shard it (FSDP2, and FSDP2 + expert parallel), fill their shards
from the safetensors files, and together hold exactly the one-process import, each having read about
half of the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from parallel_helpers import run_ranks
from test_hf_families import hf_model

from moe_swarm.hf.importer import tensor_files
from moe_swarm.hf.safetensors_io import ShardReader

CHILD = Path(__file__).with_name("hf_parallel_child.py")


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hfpl") / "mixtral"
    hf_model("mixtral").save_pretrained(folder, max_shard_size="40KB")  # several shards + index
    return folder


def test_each_rank_reads_only_its_slices_and_the_ranks_hold_the_import(mixtral, tmp_path):
    result = tmp_path / "result.json"
    run_ranks(2, [str(mixtral), str(result), "--ep", "1", "2"], tmp_path, child=CHILD)
    ranks = [json.loads(Path(f"{result}.{r}").read_text()) for r in range(2)]
    total = sum(  # the checkpoint's tensor bytes, from each shard's header
        end - begin
        for file in set(tensor_files(mixtral).values())
        for begin, end in (e["data_offsets"] for e in ShardReader(file).entries.values())
    )
    for layout in ("ep1", "ep2"):  # FSDP2 over both ranks; FSDP2 + experts split over the two ranks
        first = ranks[0][layout]
        assert first["keys_equal"] and first["bit_identical"], (layout, first)
        assert first["logits_gap"] < 1e-5, (layout, first)
        read = [r[layout]["bytes_read"] for r in ranks]
        for b in read:  # dim-0 halves of every tensor, half of the experts: about half each
            assert 0.4 * total < b < 0.6 * total, (layout, read, total)
        assert abs(sum(read) - total) <= 0.05 * total, (layout, read, total)
