"""Suite ``data``: is the data pipeline ever the bottleneck? Side by side in one run:

- ``loader``: tokens/s of ``TokenDataModule``'s packed, resumable loader with 0, 1 and 2 worker
  processes (timed from the first batch, so worker start-up is left out), each against the model's
  own training tokens/s (forward + backward + AdamW, plain PyTorch) at the quickstart shape
  (``experiment=quickstart``: model ``moe_small``, batch 16 x 128 tokens). Goal: >= 10x.
- ``prepare``: ``moe-swarm-prepare``'s tokens/s with a tokenizer.json on one core (one worker,
  ``TOKENIZERS_PARALLELISM=false``), JSONL reading and shard writing included, against the
  ``tokenizers`` library's own ``encode_batch`` of the same documents on one core. Goal: >= 0.8x.

The text is CPython's reference docs (``pydoc_data``: real prose and code, one document per topic),
repeated to size; the tokenizer.json is a byte-level BPE trained on it here.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

from moe_swarm.bench.context import BenchContext, Case
from moe_swarm.bench.results import Row
from moe_swarm.bench.timing import median

SUITE = "data"
WORKERS = (0, 1, 2)


def cases(ctx: BenchContext) -> list[Case]:
    return [
        Case(SUITE, "loader", lambda: loader_rows(ctx)),
        Case(SUITE, "prepare", lambda: prepare_rows(ctx)),
    ]


def _write_corpus(folder: Path, repeats: int) -> Path:
    from pydoc_data.topics import topics

    path = folder / "pydoc.jsonl"
    with path.open("w") as f:
        for r in range(repeats):
            for key in sorted(topics):
                f.write(json.dumps({"text": f"{key} ({r})\n{topics[key]}"}) + "\n")
    return path


def _quickstart_shape() -> tuple[dict, int, int]:
    """(model config, batch size, block size) of ``experiment=quickstart``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from moe_swarm.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=quickstart"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("init_from", None)  # the LightningModule's option, not an architecture field
    return model, int(cfg.data.batch_size), int(cfg.data.block_size)


def model_tokens_per_s(ctx: BenchContext, model_cfg: dict, batch: int, block: int, steps: int) -> list[float]:
    """Training tokens/s of the quickstart model, per step after one warm-up step."""
    from moe_swarm.model import MoETransformer, TransformerConfig

    torch.manual_seed(ctx.seed)
    model = MoETransformer(TransformerConfig.from_dict(model_cfg)).to(ctx.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, model.cfg.vocab_size, (batch, block + 1), device=ctx.device)
    rates = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        out = model(ids[:, :-1], ids[:, 1:])
        (out.loss + 0.01 * out.load_balance_loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.sync()
        if i:
            rates.append(batch * block / (time.perf_counter() - t0))
    return rates


def loader_tokens_per_s(path: Path, workers: int, batch: int, block: int, batches: int) -> float:
    from moe_swarm.training.stream_data import TokenDataModule

    dm = TokenDataModule(str(path), block_size=block, batch_size=batch, num_workers=workers, val_fraction=0.0)
    dm.setup()
    it = iter(dm.train_dataloader())
    for _ in range(workers + 1):  # every worker started and has made its first batch
        next(it)
    t0 = time.perf_counter()
    n = sum(1 for _, _ in zip(range(batches), it))
    return n * batch * block / (time.perf_counter() - t0)


def loader_rows(ctx: BenchContext) -> list[Row]:
    from moe_swarm.data.prepare import prepare

    model_cfg, batch, block = _quickstart_shape()
    model = model_tokens_per_s(ctx, model_cfg, batch, block, ctx.repeats_or(8, 3))
    model_rate = median(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = _write_corpus(Path(tmp), 1 if ctx.quick else 8)
        prepare([("pydoc", str(corpus))], Path(tmp) / "tokens", workers=1)
        batches = 40 if ctx.quick else 400
        for workers in WORKERS:
            rate = loader_tokens_per_s(Path(tmp) / "tokens", workers, batch, block, batches)
            rows.append(
                ctx.row(
                    SUITE,
                    f"quickstart_b{batch}t{block}/loader_workers{workers}_tokens_per_s",
                    rate,
                    "tokens/s",
                    reference=f"{SUITE}/quickstart_b{batch}t{block}/model_train_tokens_per_s",
                    reference_value=model_rate,
                    higher_is_better=True,
                    config={"workers": workers, "batch_size": batch, "block_size": block, "batches": batches},
                    note="goal: ratio >= 10 (the loader is never the bottleneck)",
                    samples=[rate],
                )
            )
    return rows


def prepare_rows(ctx: BenchContext) -> list[Row]:
    from tokenizers import Tokenizer

    from moe_swarm.data.prepare import prepare, train_bpe
    from moe_swarm.data.sources import open_source, plan_units, read_unit

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core on both sides
    repeats = ctx.repeats_or(3, 2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = _write_corpus(root, 1 if ctx.quick else 6)
        units = plan_units(open_source("pydoc", str(corpus)), 1 << 30)
        tok_path = root / "tok" / "tokenizer.json"
        tok_path.parent.mkdir()
        train_bpe(units, 1024 if ctx.quick else 8192, tok_path)
        docs = [d for u in units for d in read_unit(u)]
        ours, theirs = [], []
        hf = Tokenizer.from_file(str(tok_path))
        for r in range(repeats + 1):  # the first round warms both up and is not counted
            t0 = time.perf_counter()
            count = sum(len(e.ids) for e in hf.encode_batch(docs, add_special_tokens=False))
            theirs.append(count / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            result = prepare([("pydoc", str(corpus))], root / f"out{r}", tokenizer=str(tok_path), workers=1)
            ours.append(result.manifest["tokens"] / (time.perf_counter() - t0))
        ours, theirs = ours[1:], theirs[1:]
        assert count == result.manifest["tokens"], "both sides encode the same text to the same tokens"
    name = f"pydoc_{len(docs)}docs"
    return [
        ctx.row(
            SUITE,
            f"{name}/prepare_tokens_per_s_per_core",
            median(ours),
            "tokens/s",
            reference=f"{SUITE}/{name}/tokenizers_encode_batch_tokens_per_s_per_core",
            reference_value=median(theirs),
            higher_is_better=True,
            config={"documents": len(docs), "tokens": count, "workers": 1},
            note="goal: ratio >= 0.8; ours includes reading JSONL and writing shards",
            samples=ours,
        )
    ]
