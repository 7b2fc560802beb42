"""The packed token stream: order, exact resume (workers, epochs, world sizes), mixture, held-out
validation documents, document masking in the model, and the tokenizer agreement check."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from moe_swarm.data.packing import Position
from moe_swarm.data.shards import FORMAT, MANIFEST, SHARD_DIR, json_bytes, write_shard
from moe_swarm.errors import UserError
from moe_swarm.model.config import TransformerConfig
from moe_swarm.model.transformer import MoETransformer
from moe_swarm.training.stream_data import TokenDataModule

EOS = 0


def make_unique_data(root: Path, docs: dict[str, int], seed: int = 0) -> Path:
    """Prepared data whose every token id is unique (ids 1000+), so a repeat is visible."""
    rng = np.random.default_rng(seed)
    shard_dir = root / SHARD_DIR
    shard_dir.mkdir(parents=True)
    next_id, shards, sources = 1000, [], []
    for name, n in docs.items():
        arrays = []
        for _ in range(n):
            length = int(rng.integers(3, 40))
            arrays.append(np.arange(next_id, next_id + length))
            next_id += length
        half = n // 2
        for k, part in enumerate((arrays[:half], arrays[half:])):
            shards.append(write_shard(shard_dir, f"{name}-{k:05d}", part, np.dtype("<u4"), {"source": name}))
        sources.append({"name": name, "documents": n, "tokens": sum(a.size for a in arrays)})
    manifest = {
        "format": FORMAT,
        "tokenizer": {"spec": "test", "fingerprint": "unique-test", "vocab_size": next_id, "eos_id": EOS},
        "dtype": "<u4",
        "sources": sources,
        "shards": [{k: s[k] for k in ("name", "source", "tokens", "documents", "sha256")} for s in shards],
    }
    (root / MANIFEST).write_bytes(json_bytes(manifest))
    return root


def module(path: Path, rank: int = 0, world: int = 1, **kw) -> TokenDataModule:
    dm = TokenDataModule(str(path), **{"block_size": 8, "batch_size": 2, "val_fraction": 0.1, **kw})
    dm.setup()
    dm.train_stream.rank, dm.train_stream.world_size = rank, world
    return dm


def epoch_batches(
    dm: TokenDataModule, state: dict | None = None, limit: int | None = None
) -> tuple[list, dict]:
    """Batches of one pass (as a Trainer sees them, position keys removed) and the state after them."""
    loader = dm.train_dataloader()
    if state is not None:
        loader.load_state_dict(state)
    out = []
    for batch in loader:
        out.append(dm.on_before_batch_transfer(batch, 0)["input_ids"].clone())
        if limit is not None and len(out) == limit:
            break
    return out, loader.state_dict()


def test_resume_mid_epoch_and_across_epochs_gives_the_same_batches(tmp_path):
    data = make_unique_data(tmp_path / "d", {"a": 30, "b": 20})
    dm = module(data)
    loader = dm.train_dataloader()
    full = []
    for _ in range(2):  # two passes: epochs 0 and 1
        full += [dm.on_before_batch_transfer(b, 0)["input_ids"].clone() for b in loader]
    per_epoch = dm.train_stream.epoch_batches(Position())
    assert len(full) == per_epoch + dm.train_stream.epoch_batches(Position(1))
    for k in (1, per_epoch - 1, per_epoch):
        first, state = epoch_batches(module(data), limit=k)
        rest_dm = module(data)
        loader = rest_dm.train_dataloader()
        loader.load_state_dict(state)
        rest = [rest_dm.on_before_batch_transfer(b, 0)["input_ids"].clone() for b in loader]
        if k == per_epoch:  # a finished epoch resumes at the start of the next one
            assert int(state["epoch"]) == 0 and rest[0].equal(full[per_epoch])
        assert all(a.equal(b) for a, b in zip(first + rest, full)), k
    assert not full[0].equal(full[per_epoch]), "each epoch has its own order"


def test_spawned_workers_give_the_same_batches_as_none(tmp_path):
    data = make_unique_data(tmp_path / "d", {"a": 30, "b": 20})
    plain, _ = epoch_batches(module(data, num_workers=0))
    two, _ = epoch_batches(module(data, num_workers=2))
    assert len(plain) == len(two) > 4 and all(a.equal(b) for a, b in zip(plain, two))
    first, state = epoch_batches(module(data, num_workers=2), limit=3)
    rest, _ = epoch_batches(module(data, num_workers=2), state=state)
    assert all(a.equal(b) for a, b in zip(first + rest, plain)) and len(first + rest) == len(plain)


def _inputs(batches: list[torch.Tensor]) -> list[int]:
    return [t for b in batches for t in b.reshape(-1).tolist() if t != EOS]


@pytest.mark.parametrize("new_world", [1, 3])
def test_resuming_on_another_world_size_sees_no_token_twice_in_an_epoch(tmp_path, new_world):
    data = make_unique_data(tmp_path / "d", {"a": 60, "b": 40})
    seen, state = [], None
    for rank in range(2):  # two ranks train 3 batches each, then the run stops
        batches, state = epoch_batches(module(data, rank=rank, world=2), limit=3)
        seen += batches
    assert state["world_size"] == 2 and state["sequences"] == 3 * 2 * 2
    for rank in range(new_world):
        batches, _ = epoch_batches(module(data, rank=rank, world=new_world), state=state)
        seen += batches
    tokens = _inputs(seen)
    repeats = [t for t, n in Counter(tokens).items() if n > 1]
    assert not repeats, f"{len(repeats)} tokens seen twice"
    # Nothing skipped either: at most the last, partial global batch of the epoch is left out.
    whole = _inputs(epoch_batches(module(data))[0])
    assert len(tokens) >= len(whole) - 2 * new_world * 2 * 8


def test_mixture_weights_repeat_or_drop_sources_and_bad_weights_are_named(tmp_path):
    data = make_unique_data(tmp_path / "d", {"a": 30, "b": 20})
    dm = module(data, mixture={"a": 2.0, "b": 0.5})
    order = dm.train_stream.epoch_order(0)
    per_source = Counter(dm.train_stream.docs.source[order].tolist())
    train = Counter(dm.train_stream.docs.source.tolist())
    assert per_source[0] == 2 * train[0] and per_source[1] == round(0.5 * train[1])
    assert Counter(order.tolist()).most_common(1)[0][1] == 2, "weight 2: every document of a twice"
    only_a = module(data, mixture={"a": 1.0}).train_stream
    assert set(only_a.docs.source[only_a.epoch_order(0)].tolist()) == {0}
    for bad, message in [
        ({"a": 0}, "data.mixture.a=0: a weight must be a number > 0"),
        ({"a": -1.0}, "data.mixture.a=-1.0"),
        ({"c": 1.0}, "data.mixture.c: no such source; the data has a, b"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            TokenDataModule(str(data), mixture=bad)


def test_validation_documents_are_held_out_whole(tmp_path):
    data = make_unique_data(tmp_path / "d", {"a": 30, "b": 20})
    dm = module(data, val_fraction=0.2)
    train = set(_inputs(epoch_batches(dm)[0]))
    val = set(_inputs([dm.val_set[i]["input_ids"][None] for i in range(len(dm.val_set))]))
    assert val and train and not train & val
    assert len(dm.val_set.stream.docs) == 10
    assert (
        module(data, val_fraction=0.2, seed=5).val_set.stream.docs.start.tolist()
        == dm.val_set.stream.docs.start.tolist()
    )


def test_tokenizer_or_vocabulary_disagreement_refuses_with_the_reason(tmp_path):
    from moe_swarm.data.tokenizer import ByteTokenizer

    data = make_unique_data(tmp_path / "d", {"a": 30})
    dm = TokenDataModule(str(data), block_size=8, batch_size=2)

    class Module:
        tokenizer = ByteTokenizer()

    with pytest.raises(
        UserError, match="fingerprint unique-test.*prepare the data with the model's tokenizer"
    ):
        dm.check_tokenizer(Module())
    small = MoETransformer(TransformerConfig(vocab_size=264, d_model=16, n_layers=1, n_heads=2, ffn="dense"))

    class Small:
        model = small

    with pytest.raises(UserError, match=r"model\.vocab_size=264; set model\.vocab_size="):
        dm.check_tokenizer(Small())
    dm.setup()
    loader = dm.train_dataloader()
    with pytest.raises(UserError, match="tokenized with other"):
        loader.load_state_dict({"epoch": 0, "sequences": 0, "seed": 0, "world_size": 1, "tokenizer": "other"})


def test_mask_documents_matches_separate_forward_passes(tmp_path):
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, ffn="dense", max_seq_len=32)
    model = MoETransformer(cfg).eval()
    docs = [torch.randint(1, 64, (n,)) for n in (5, 9, 2)]
    packed = torch.cat(docs)[None]
    doc_ids = torch.cat([torch.full((d.numel(),), i) for i, d in enumerate(docs)])[None]
    with torch.no_grad():
        joint = model(packed, document_ids=doc_ids).logits[0]
        alone = torch.cat([model(d[None]).logits[0] for d in docs])
        plain = model(packed).logits[0]
        one_doc = model(packed, document_ids=torch.zeros_like(doc_ids)).logits[0]
    torch.testing.assert_close(joint, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_doc, plain, atol=1e-5, rtol=1e-5)
    assert (joint[5:] - plain[5:]).abs().max() > 1e-3, "without the mask the documents see each other"


def test_stream_batches_carry_document_ids_when_masking(tmp_path):
    data = make_unique_data(tmp_path / "d", {"a": 30})
    dm = module(data, packing={"mask_documents": True})
    batch = next(iter(dm.train_dataloader()))
    ids, docs = batch["input_ids"], batch["document_ids"]
    assert docs.shape == ids.shape and (docs[:, 0] == 0).all()
    # A new document starts right after each EOS.
    after_eos = torch.zeros_like(ids, dtype=torch.bool)
    after_eos[:, 1:] = ids[:, :-1] == EOS
    changes = torch.zeros_like(after_eos)
    changes[:, 1:] = docs[:, 1:] != docs[:, :-1]
    assert changes.equal(after_eos)
    with pytest.raises(UserError, match="unknown key"):
        TokenDataModule(str(data), packing={"mask_document": True})


def test_manifest_fields_reach_the_module(tmp_path):
    data = make_unique_data(tmp_path / "d", {"a": 30})
    dm = TokenDataModule(str(data))
    assert dm.vocab_size == json.loads((data / MANIFEST).read_text())["tokenizer"]["vocab_size"]
