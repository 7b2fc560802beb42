"""Global-batch load balancing (module.balance_scope=global) and per-layer router health metrics.

Global: the balance loss's expert fractions f come from routed counts summed over every rank and
the optimizer step's micro-batches so far; with one micro-batch on one rank that is the micro loss.
The 2-rank case runs real processes (Lightning ddp_spawn, gloo) and compares what each rank saw."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import free_port
from torch.utils.data import DataLoader, Dataset

from moe_swarm.model.router import balance_loss, dead_experts, load_cv, max_over_mean
from moe_swarm.training.lm_module import MoELanguageModel

TINY = {
    "d_model": 16,
    "n_layers": 2,
    "n_heads": 2,
    "max_seq_len": 16,
    "moe": {"num_experts": 4, "d_ff": 16, "router": {"top_k": 2}},
}


def _batch(seed: int, b: int = 2, t: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, t + 1), generator=g)
    return {"input_ids": x[:, :-1], "targets": x[:, 1:]}


def _module(**kw) -> MoELanguageModel:
    torch.manual_seed(0)
    return MoELanguageModel(TINY, balance_scope="global", **kw)


def test_global_equals_micro_with_one_micro_batch_on_one_rank():
    m = _module()
    out = m(**{"idx": _batch(0)["input_ids"], "targets": _batch(0)["targets"]})
    torch.testing.assert_close(m.global_balance_loss(out), out.load_balance_loss, atol=1e-7, rtol=0)
    torch.testing.assert_close(
        m.balance_counts, torch.stack([a.routed_counts for a in out.aux]), atol=0, rtol=0
    )


def test_global_fractions_accumulate_over_micro_batches_and_reset_at_the_optimizer_step():
    m = _module()
    outs = [m(_batch(s)["input_ids"], _batch(s)["targets"]) for s in (1, 2)]
    m.global_balance_loss(outs[0])
    second = m.global_balance_loss(outs[1])
    both = sum(torch.stack([a.routed_counts for a in o.aux]) for o in outs)
    torch.testing.assert_close(m.balance_counts, both, atol=0, rtol=0)  # integer counts
    # f over both micro-batches, P of the second one (its gradient), mean over layers.
    p2 = torch.stack([a.mean_probs for a in outs[1].aux])
    torch.testing.assert_close(second, balance_loss(both, p2).mean(), atol=1e-7, rtol=0)
    assert not torch.allclose(second, outs[1].load_balance_loss, atol=1e-6, rtol=0)  # really not micro
    m.on_before_optimizer_step(None)
    assert m.balance_counts.abs().sum() == 0


def test_bad_balance_scope_is_refused_by_name():
    with pytest.raises(ValueError, match="balance_scope"):
        MoELanguageModel(TINY, balance_scope="batch")


def test_health_statistics_against_hand_values():
    counts = torch.tensor([[4.0, 4.0, 4.0, 4.0], [16.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(load_cv(counts), torch.tensor([0.0, 3**0.5]), atol=1e-6, rtol=0)
    torch.testing.assert_close(max_over_mean(counts), torch.tensor([1.0, 4.0]), atol=1e-6, rtol=0)
    assert dead_experts(counts).tolist() == [0, 3]


def test_dead_experts_count_over_a_window_of_optimizer_steps(monkeypatch):
    m = _module(health_window=2)
    step = {"n": 0}
    monkeypatch.setattr(MoELanguageModel, "global_step", property(lambda self: step["n"]))
    alive = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    only_first = torch.tensor([[3.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert m._router_health(alive)["router/layer0/dead_experts"] == 0
    step["n"] = 1
    assert m._router_health(only_first)["router/layer0/dead_experts"] == 0  # step 0 is in the window
    step["n"] = 2
    h = m._router_health(only_first)
    assert h["router/layer0/dead_experts"] == 3 and h["router/layer1/dead_experts"] == 0
    assert h["router/dead_experts"] == 3
    torch.testing.assert_close(h["router/layer0/max_over_mean"], torch.tensor(4.0), atol=1e-6, rtol=0)


class _Windows(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        b = _batch(100 + i, b=1)
        return {k: v[0] for k, v in b.items()}


class _Record(L.Callback):
    """Per rank: the global counts at the optimizer step and this rank's own routed counts."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.local = None
        self.rows: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with torch.no_grad():
            out = pl_module(batch["input_ids"], batch["targets"])
        c = torch.stack([a.routed_counts for a in out.aux])
        self.local = c if self.local is None else self.local + c

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.rows.append({"global": pl_module.balance_counts.tolist(), "local": self.local.tolist()})
        self.local = None

    def on_train_end(self, trainer, pl_module) -> None:
        path = Path(self.folder) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.rows))


@pytest.mark.slow
def test_global_statistics_are_equal_across_two_ddp_ranks(tmp_path, monkeypatch):
    """Two real processes (gloo), 2 micro-batches per step: both ranks hold the same global counts,
    the sum of both ranks' routed counts over both micro-batches."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))  # below the ephemeral range (conftest.free_port)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    module = _module()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=2,
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_Record(str(tmp_path))],
    )
    trainer.fit(module, DataLoader(_Windows(), batch_size=1))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    for step in range(2):
        g0, g1 = (torch.tensor(r[step]["global"]) for r in ranks)
        l0, l1 = (torch.tensor(r[step]["local"]) for r in ranks)
        torch.testing.assert_close(g0, g1, atol=0, rtol=0)  # all-reduced integer counts
        torch.testing.assert_close(g0, l0 + l1, atol=0, rtol=0)
        assert not torch.equal(l0, l1)  # the ranks saw different tokens


def test_a_fit_logs_router_health_per_moe_layer():
    module = _module(health_window=3)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(_Windows(), batch_size=2))
    m = trainer.callback_metrics
    for layer in (0, 1):
        for name in ("dead_experts", "entropy", "load_cv", "max_over_mean"):
            assert f"router/layer{layer}/{name}" in m, (layer, name)
        assert 0 <= float(m[f"router/layer{layer}/dead_experts"]) <= 4
        assert float(m[f"router/layer{layer}/max_over_mean"]) >= 1.0
    assert module.balance_counts.abs().sum() == 0  # reset after the last optimizer step
