"""DataModules: documented batch shapes and dtypes, masks, determinism under a seed, spawn workers."""

import lightning as L
import pytest
import torch
from torch import nn

from moe_swarm.data import (
    EOS_ID,
    IGNORE_INDEX,
    PAD_ID,
    VOCAB_SIZE,
    ByteTokenizer,
    encode_problem,
    load_corpus,
    split_train_val,
    write_bin,
)
from moe_swarm.training.datamodules import TaskDataModule, TextDataModule, pad_collate

torch.set_num_threads(1)
tok = ByteTokenizer()


def first_batches(loader, n=2):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def contains(haystack: torch.Tensor, needle: torch.Tensor) -> bool:
    return bytes(needle.tolist()) in bytes(haystack.tolist())


# ---------------------------------------------------------------- TextDataModule


def make_text_dm(**kw):
    args = {"block_size": 32, "batch_size": 4, "train_samples_per_epoch": 64, "val_windows": 8, **kw}
    dm = TextDataModule(**args)
    dm.setup("fit")
    return dm


def test_text_batches_have_documented_shapes_and_come_from_the_right_region():
    dm = make_text_dm()
    assert dm.vocab_size == VOCAB_SIZE
    corpus = load_corpus("pydoc")
    train_region, val_region = split_train_val(corpus, 0.1)
    for loader, region in ((dm.train_dataloader(), train_region), (dm.val_dataloader(), val_region)):
        batch = next(iter(loader))
        assert set(batch) == {"input_ids", "targets", "attention_mask"}
        assert batch["input_ids"].shape == batch["targets"].shape == batch["attention_mask"].shape == (4, 32)
        assert batch["input_ids"].dtype == batch["targets"].dtype == torch.long
        assert batch["attention_mask"].dtype == torch.bool and bool(batch["attention_mask"].all())
        assert torch.equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])  # next-token targets
        for x, y in zip(batch["input_ids"], batch["targets"]):
            assert contains(region, torch.cat([x, y[-1:]]))


def test_text_windows_stay_inside_their_region_and_val_is_evenly_spaced():
    dm = make_text_dm(train_samples_per_epoch=5000)
    n_train = len(dm.train_set.source)
    assert int(dm.train_set.starts.max()) + 33 <= n_train
    assert int(dm.train_set.starts.min()) >= 0
    val_starts = dm.val_set.starts
    n_val = len(dm.val_set.source)
    assert val_starts.numel() == 8 and int(val_starts[0]) == 0 and int(val_starts[-1]) == n_val - 33
    gaps = val_starts.diff()
    assert int(gaps.max() - gaps.min()) <= 1


def test_text_datamodule_is_deterministic_under_seed():
    a = first_batches(make_text_dm(seed=1).train_dataloader())
    b = first_batches(make_text_dm(seed=1).train_dataloader())
    c = first_batches(make_text_dm(seed=2).train_dataloader())
    assert_same_batches(a, b)
    assert not torch.equal(a[0]["input_ids"], c[0]["input_ids"])
    assert_same_batches(
        first_batches(make_text_dm(seed=1).val_dataloader()),
        first_batches(make_text_dm(seed=2).val_dataloader()),
    )


def test_text_epochs_visit_windows_in_a_new_order():
    loader = make_text_dm().train_dataloader()
    epoch1 = torch.cat([b["input_ids"] for b in loader])
    epoch2 = torch.cat([b["input_ids"] for b in loader])
    assert not torch.equal(epoch1, epoch2)
    key = lambda t: sorted(bytes(r.tolist()) for r in t)  # noqa: E731
    assert key(epoch1) == key(epoch2)


def test_text_from_bin_matches_text_corpus_and_checks_vocab(tmp_path):
    corpus = load_corpus("pydoc", max_bytes=20_000)
    train, val = split_train_val(corpus, 0.25)
    write_bin(train, tmp_path / "c.bin")
    write_bin(val, tmp_path / "c.val.bin")
    from_bin = make_text_dm(bin_path=str(tmp_path / "c.bin"), val_bin_path=str(tmp_path / "c.val.bin"))
    from_text = make_text_dm(max_bytes=20_000, val_fraction=0.25)
    assert_same_batches(first_batches(from_bin.val_dataloader()), first_batches(from_text.val_dataloader()))
    assert_same_batches(
        first_batches(from_bin.train_dataloader()), first_batches(from_text.train_dataloader())
    )
    # corpus="bin" with one path == bin_path, split by val_fraction
    whole = tmp_path / "whole.bin"
    write_bin(corpus, whole)
    via_corpus = make_text_dm(corpus="bin", paths=[str(whole)], val_fraction=0.25)
    assert_same_batches(first_batches(via_corpus.val_dataloader()), first_batches(from_text.val_dataloader()))

    foreign = tmp_path / "gpt2.bin"
    write_bin([1, 2, 50256, 3] * 100, foreign)
    with pytest.raises(ValueError, match="token id 50256, outside the byte vocabulary.*another tokenizer"):
        make_text_dm(bin_path=str(foreign))


def test_text_datamodule_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="needs block_size\\+1 = 1025"):
        make_text_dm(block_size=1024, max_bytes=5000)
    with pytest.raises(ValueError, match="unknown corpus"):
        make_text_dm(corpus="wiki")
    with pytest.raises(ValueError, match="not both"):
        TextDataModule(bin_path="x.bin", paths=["y.txt"])
    with pytest.raises(ValueError, match="does not exist"):
        make_text_dm(bin_path=str(tmp_path / "missing.bin"))
    with pytest.raises(ValueError, match="no full batch"):
        TextDataModule(batch_size=64, train_samples_per_epoch=10)
    with pytest.raises(RuntimeError, match="call setup"):
        TextDataModule().train_dataloader()


# ---------------------------------------------------------------- TaskDataModule


def make_task_dm(**kw):
    args = {
        "task": "mul",
        "n_train": 200,
        "n_val": 40,
        "n_test": 40,
        "batch_size": 16,
        "eval_subset": 10,
        **kw,
    }
    return TaskDataModule(**args)


def test_pad_collate_pads_right_and_masks_pads():
    batch = pad_collate(
        [{"input_ids": [1, 2, 3], "targets": [-100, 3, 4]}, {"input_ids": [5], "targets": [6]}]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [5, PAD_ID, PAD_ID]]
    assert batch["targets"].tolist() == [[-100, 3, 4], [6, -100, -100]]
    assert batch["attention_mask"].tolist() == [[True, True, True], [True, False, False]]
    with pytest.raises(ValueError, match="2 input_ids but 1 targets"):
        pad_collate([{"input_ids": [1, 2], "targets": [1]}])


@pytest.mark.parametrize(
    "task,kwargs", [("mul", {}), ("reach", {"max_hops": 4}), ("arith", {"max_value": 20})]
)
def test_task_batches_carry_loss_only_on_answer_and_eos(task, kwargs):
    dm = make_task_dm(task=task, task_kwargs=kwargs)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    ids, targets, mask = batch["input_ids"], batch["targets"], batch["attention_mask"]
    assert ids.dtype == targets.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == targets.shape == mask.shape and ids.shape[0] == 16
    assert ids.shape[1] <= dm.max_len
    assert bool((ids[~mask] == PAD_ID).all()) and bool((targets[~mask] == IGNORE_INDEX).all())
    assert not bool((ids[mask] == PAD_ID).any())
    problems = {tuple(encode_problem(p, tok)[0]): p for p in dm.datasets["train"].problems}
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        p = problems[tuple(ids[row, :n].tolist())]
        scored = targets[row][targets[row] != IGNORE_INDEX].tolist()
        assert scored == [*p.answer.encode(), EOS_ID]
        assert bool((targets[row, : n - len(scored)] == IGNORE_INDEX).all())


def test_task_datamodule_is_deterministic_and_exposes_eval_problems():
    a, b, c = make_task_dm(seed=3), make_task_dm(seed=3), make_task_dm(seed=4)
    assert_same_batches(first_batches(a.train_dataloader(), 3), first_batches(b.train_dataloader(), 3))
    assert not torch.equal(
        next(iter(a.train_dataloader()))["input_ids"], next(iter(c.train_dataloader()))["input_ids"]
    )
    assert a.eval_problems() == b.eval_problems() == a.task.generate("val", 40, seed=3)[:10]
    assert len(a.eval_problems("test", n=25)) == 25
    assert a.max_len == 13 and a.max_answer_len == 6  # [BOS] + 7 prompt bytes + 5 answer bytes; 5 bytes + EOS
    assert a.vocab_size == VOCAB_SIZE
    val_prompts = {p.prompt for p in a.datasets["val"].problems}
    assert not val_prompts & {p.prompt for p in a.datasets["train"].problems}
    with pytest.raises(ValueError, match="unknown split"):
        a.eval_problems("dev")
    with pytest.raises(ValueError, match="valid names: mul, reach, arith"):
        TaskDataModule(task="sort")


def test_task_datamodule_spawn_worker_gives_the_same_batches():
    in_process = first_batches(make_task_dm(seed=5).train_dataloader(), 3)
    loader = make_task_dm(seed=5, num_workers=1).train_dataloader()
    assert loader.multiprocessing_context.get_start_method() == "spawn" and loader.persistent_workers
    assert_same_batches(in_process, first_batches(loader, 3))


def test_text_bin_spawn_worker_gives_the_same_batches(tmp_path):
    write_bin(load_corpus("pydoc", max_bytes=30_000), tmp_path / "p.bin")
    in_process = first_batches(make_text_dm(bin_path=str(tmp_path / "p.bin")).train_dataloader())
    loader = make_text_dm(bin_path=str(tmp_path / "p.bin"), num_workers=1).train_dataloader()
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    assert_same_batches(in_process, first_batches(loader))


class TinyLM(L.LightningModule):
    """A bigram model: just enough to drive the Trainer through fit and test with these batches."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB_SIZE, VOCAB_SIZE)
        self.seen = {"train": 0, "val": 0, "test": 0}

    def _loss(self, batch, stage):
        self.seen[stage] += int(batch["attention_mask"].sum())
        logits = self.emb(batch["input_ids"])
        return nn.functional.cross_entropy(
            logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE_INDEX
        )

    def training_step(self, batch, _):
        return self._loss(batch, "train")

    def validation_step(self, batch, _):
        self._loss(batch, "val")

    def test_step(self, batch, _):
        self._loss(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("dm_factory", [lambda: make_task_dm(), lambda: make_text_dm()], ids=["task", "text"])
def test_trainer_runs_fit_and_test_on_the_datamodules(dm_factory, tmp_path):
    dm, model = dm_factory(), TinyLM()
    trainer = L.Trainer(
        max_steps=3,
        limit_val_batches=2,
        limit_test_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3 and model.seen["train"] > 0 and model.seen["val"] > 0
    if isinstance(dm, TaskDataModule):
        trainer.test(model, datamodule=dm)
        assert model.seen["test"] > 0


def test_data_package_imports_no_framework():
    """``moe_swarm.data`` is plain Python + PyTorch: importing it must not pull in Lightning or Hydra."""
    import subprocess
    import sys

    code = (
        "import sys, moe_swarm.data as d; d.get_task('mul'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'hydra')]; "
        "print(bad); assert not bad and not hasattr(d, 'TextDataModule')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
