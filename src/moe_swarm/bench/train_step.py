"""Suite ``train_step``: one training step of the MoE LM, plain PyTorch loop vs the Lightning Trainer.

Both train the same model (same seed, same config), on the same fixed batches, with the same
loss (LM + aux + z-loss coefficients of ``MoELanguageModel``) and the same AdamW parameter groups.
Each repeat runs a few steps of each, alternating which goes first; the first step of every run
is a warm-up and is not counted. Lightning's step time is measured by a callback as the time
between the ends of consecutive batches, so it includes the loop's own per-step work (fetching
the batch, hooks, logging) that a plain loop does not have.

Model-FLOPs utilisation compares achieved model FLOP/s with a matmul peak MEASURED in this run at
the same thread count (fp32 on CPU; bf16 on CUDA, where training runs bf16-mixed). Training FLOPs
per token = 6 * N + 12 * n_layers * d_model * T (the PaLM appendix B estimate), with N = the
matmul parameters a token touches: active parameters minus the embedding lookup plus the output
head (tied or not). Router, norms and softmax are ignored.
"""

from __future__ import annotations

import gc
import inspect
import logging
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch

from moe_swarm.bench.context import BenchContext, Case
from moe_swarm.bench.model_shape import ModelShape
from moe_swarm.bench.results import Row
from moe_swarm.bench.timing import median, paired_ratios, time_call, time_interleaved
from moe_swarm.model import MoETransformer, TransformerConfig

SUITE = "train_step"


@dataclass(frozen=True)
class TrainSetup(ModelShape):
    batch_size: int
    seq_len: int
    steps: int  # counted steps per run (one warm-up step more is run)
    peak_n: int  # matmul size for the peak measurement

    @property
    def case(self) -> str:
        return f"{self.shape_name}_b{self.batch_size}t{self.seq_len}"


FULL = TrainSetup(128, 4, 4, 256, 8, 2, batch_size=8, seq_len=128, steps=8, peak_n=1024)
QUICK = TrainSetup(64, 2, 2, 64, 4, 2, batch_size=4, seq_len=32, steps=3, peak_n=256)


def make_batches(setup: TrainSetup, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Fixed random byte sequences as the datamodules shape them (input_ids, targets, attention_mask)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        seq = torch.randint(0, 256, (setup.batch_size, setup.seq_len + 1), generator=gen)
        out.append(
            {
                "input_ids": seq[:, :-1].contiguous(),
                "targets": seq[:, 1:].contiguous(),
                "attention_mask": torch.ones(setup.batch_size, setup.seq_len, dtype=torch.bool),
            }
        )
    return out


def matmul_peak_gflops(
    ctx: BenchContext, n: int, dtype: torch.dtype, repeats: int
) -> tuple[float, list[float]]:
    """Median GFLOP/s of an (n x n) @ (n x n) matmul on this device at the run's thread count."""
    a = torch.randn(n, n, device=ctx.device, dtype=dtype)
    b = torch.randn(n, n, device=ctx.device, dtype=dtype)
    times = time_interleaved({"mm": lambda: torch.mm(a, b)}, repeats=repeats, warmup=2, device=ctx.device)[
        "mm"
    ]
    gflops = [2.0 * n**3 / t / 1e9 for t in times]
    return median(gflops), gflops


class PlainLoop:
    """The reference: forward, loss, backward, AdamW step, zero_grad, nothing else."""

    def __init__(
        self,
        coefs,
        model_cfg: TransformerConfig,
        ctx: BenchContext,
        batches: list[dict],
        compile: bool = False,
    ):
        from moe_swarm.training.lm_module import parameter_groups

        self.coefs = coefs  # the LightningModule's hparams: same loss coefficients and weight decay
        torch.manual_seed(ctx.seed)
        if compile or ctx.device.type == "cuda":  # GPU-sized: initialise on the device
            with torch.device(ctx.device):
                self.model = MoETransformer(model_cfg).train()
        else:  # same init as the LightningModule's CPU model (checked by run())
            self.model = MoETransformer(model_cfg).to(ctx.device).train()
        if compile:  # per block, as MoELanguageModel.configure_model does with module.compile=true
            for block in self.model.blocks:
                block.compile()
        self.opt = torch.optim.AdamW(
            parameter_groups(self.model, self.coefs.weight_decay), lr=1e-3, betas=(0.9, 0.95)
        )
        self.batches = [{k: v.to(ctx.device) for k, v in b.items()} for b in batches]
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if ctx.device.type == "cuda" else nullcontext()
        )
        self.losses: list[float] = []

    def step(self, i: int) -> None:
        batch = self.batches[i % len(self.batches)]
        with self.autocast:
            out = self.model(batch["input_ids"], batch["targets"], pad_mask=batch["attention_mask"])
            loss = (
                out.loss
                + self.coefs.aux_loss_coef * out.load_balance_loss
                + self.coefs.z_loss_coef * out.z_loss
            )
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(loss.detach())

    def run(self, ctx: BenchContext, steps: int) -> list[float]:
        """Seconds per step for ``steps`` counted steps after one warm-up step."""
        self.step(0)
        return [time_call(lambda i=i: self.step(i), ctx.device) for i in range(1, steps + 1)]


def lightning_run(lm_module, ctx: BenchContext, batches: list[dict], steps: int) -> tuple[list[float], float]:
    """Seconds per step of ``Trainer.fit`` over ``steps`` counted steps (+1 warm-up), and its first loss."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.first_loss = float("nan")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            self.ends.append(time.perf_counter())
            if batch_idx == 0 and outputs is not None:
                self.first_loss = float(outputs["loss"].detach())

    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=steps + 1,
        accelerator="gpu" if ctx.device.type == "cuda" else "cpu",
        devices=[ctx.device.index] if ctx.device.type == "cuda" else 1,
        precision="bf16-mixed" if ctx.device.type == "cuda" else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(lm_module, train_dataloaders=loader)
    if len(timer.ends) != steps + 1:
        raise RuntimeError(f"Lightning ran {len(timer.ends)} steps, expected {steps + 1}")
    return [b - a for a, b in zip(timer.ends, timer.ends[1:])], timer.first_loss


# conf/model/moe_large.yaml (experiment=gpu_h100: 654M total / 126M active parameters), for CUDA.
GPU = TrainSetup(1024, 12, 16, 1024, 16, 2, batch_size=8, seq_len=1024, steps=10, peak_n=8192)
GPU_QUICK = TrainSetup(1024, 12, 16, 1024, 16, 2, batch_size=8, seq_len=1024, steps=4, peak_n=8192)


def eager_vs_compiled(ctx: BenchContext, setup: TrainSetup) -> list[Row]:
    """Plain-loop steps of one model eager and with per-block ``torch.compile`` (bf16-mixed on CUDA,
    fp32 on CPU), each with its MFU against a matmul peak measured in the same run."""
    from moe_swarm.training import lm_module as lm

    model_cfg = setup.model_config(setup.seq_len)
    batches = make_batches(setup, setup.steps + 1, ctx.seed)
    # The LightningModule's default loss coefficients and weight decay, without building its model.
    params = inspect.signature(lm.MoELanguageModel.__init__).parameters
    coefs = SimpleNamespace(
        **{k: params[k].default for k in ("weight_decay", "aux_loss_coef", "z_loss_coef")}
    )
    secs: dict[str, list[float]] = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        loop = PlainLoop(coefs, model_cfg, ctx, batches, compile=compiled)
        secs[name] = loop.run(ctx, setup.steps)  # the warm-up step (and compilation) is not counted
        flops_tok = loop.model.train_flops_per_token(setup.seq_len)
        del loop
        gc.collect()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    peak_dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    peak, peak_samples = matmul_peak_gflops(ctx, setup.peak_n, peak_dtype, ctx.repeats_or(full=5, quick=3))
    tokens = setup.batch_size * setup.seq_len
    case = setup.case
    config = {**asdict(setup), "dtype": "bf16-mixed" if ctx.device.type == "cuda" else "fp32"}
    ref_ms, ref_peak = f"{SUITE}/{case}/eager_ms", f"{SUITE}/{case}/matmul_peak_gflops"
    eager_ms = median(secs["eager"]) * 1e3
    rows = [
        ctx.row(SUITE, f"{case}/matmul_peak_gflops", peak, "GFLOP/s", reference=ref_peak, reference_value=peak,
                higher_is_better=True, samples=peak_samples, config=config,
                note=f"{setup.peak_n}^3 {peak_dtype} matmul"),
    ]  # fmt: skip
    for name, s in secs.items():
        ms = median(s) * 1e3
        tok_s = tokens / (ms / 1e3)
        gflops = tok_s * flops_tok / 1e9
        rows += [
            ctx.row(SUITE, f"{case}/{name}_ms", ms, "ms", reference=ref_ms, reference_value=eager_ms,
                    higher_is_better=False, samples=[x * 1e3 for x in s], config=config),
            ctx.row(SUITE, f"{case}/{name}_tok_s", tok_s, "tok/s", reference=f"{SUITE}/{case}/eager_tok_s",
                    reference_value=tokens / (eager_ms / 1e3), higher_is_better=True, config=config),
            ctx.row(SUITE, f"{case}/{name}_mfu", gflops / peak, "fraction", reference=ref_peak, reference_value=1.0,
                    higher_is_better=True, config=config,
                    note=f"model FLOP/s / measured matmul peak; {flops_tok / 1e6:.1f} MFLOP per token"),
        ]  # fmt: skip
    speedup = paired_ratios(secs["eager"], secs["compiled"])
    rows.append(ctx.row(SUITE, f"{case}/compiled_speedup", median(speedup), "x", reference=ref_ms,
                        reference_value=1.0, higher_is_better=True, samples=speedup, config=config,
                        note="eager step time / compiled step time (goal >= 1.15 on the GPU)"))  # fmt: skip
    return rows


def cases(ctx: BenchContext) -> list[Case]:
    """One case: on CUDA eager vs compiled (bf16-mixed), on CPU the plain loop vs Lightning (fp32)."""
    if ctx.device.type == "cuda":
        setup = GPU_QUICK if ctx.quick else GPU
        return [Case(SUITE, "eager_vs_compiled", lambda: eager_vs_compiled(ctx, setup), ("bf16_mixed",))]
    return [Case(SUITE, "plain_vs_lightning", lambda: plain_vs_lightning(ctx))]


def plain_vs_lightning(ctx: BenchContext) -> list[Row]:
    """The same model, data, loss and optimizer stepped by a plain loop and by the Lightning Trainer."""
    from moe_swarm.training import lm_module as lm  # Lightning: imported only when this suite runs

    setup = QUICK if ctx.quick else FULL
    repeats = ctx.repeats_or(full=3, quick=1)
    model_cfg = setup.model_config(setup.seq_len)
    batches = make_batches(setup, setup.steps + 1, ctx.seed)

    torch.manual_seed(ctx.seed)
    module = lm.MoELanguageModel(model=model_cfg.to_dict())
    plain = PlainLoop(module.hparams, model_cfg, ctx, batches)
    same_init = all(
        torch.equal(a, b.cpu()) for a, b in zip(module.model.parameters(), plain.model.parameters())
    )
    if not same_init:
        raise RuntimeError("train_step: plain and Lightning models did not start from the same weights")

    plain_s: list[float] = []
    lit_s: list[float] = []
    first_lit_loss = float("nan")
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # no "GPU available: False" banners for every repeat
    try:
        with warnings.catch_warnings():
            for message in (".*does not have many workers.*", ".*no `val_dataloader`.*", ".*treespec.*"):
                warnings.filterwarnings("ignore", message=message)
            for r in range(repeats):
                order = ("plain", "lightning") if r % 2 == 0 else ("lightning", "plain")
                for who in order:
                    if who == "plain":
                        plain_s += plain.run(ctx, setup.steps)
                    else:
                        secs, loss = lightning_run(module, ctx, batches, setup.steps)
                        lit_s += secs
                        if r == 0:
                            first_lit_loss = loss
    finally:
        quiet.setLevel(level)
    first_plain_loss = float(plain.losses[0])

    peak_dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    # A GPU needs a far bigger matmul than a CPU core to reach its peak.
    peak_n = max(setup.peak_n, 8192) if ctx.device.type == "cuda" else setup.peak_n
    peak, peak_samples = matmul_peak_gflops(ctx, peak_n, peak_dtype, ctx.repeats_or(full=5, quick=3))
    tokens = setup.batch_size * setup.seq_len
    flops_tok = plain.model.train_flops_per_token(setup.seq_len)
    plain_ms, lit_ms = median(plain_s) * 1e3, median(lit_s) * 1e3

    case = setup.case
    config = {
        **asdict(setup),
        "dtype": "bf16-mixed" if ctx.device.type == "cuda" else "fp32",
        "optimizer": "AdamW",
    }
    config.pop("steps")
    config["peak_n"] = peak_n
    ref_ms = f"{SUITE}/{case}/plain_ms"
    ref_tok = f"{SUITE}/{case}/plain_tok_s"
    ref_peak = f"{SUITE}/{case}/matmul_peak_gflops"
    loss_note = f"first-step loss (LM + aux + z) plain {first_plain_loss:.4f}, lightning {first_lit_loss:.4f}"
    plain_tok, lit_tok = tokens / (plain_ms / 1e3), tokens / (lit_ms / 1e3)
    plain_gf, lit_gf = plain_tok * flops_tok / 1e9, lit_tok * flops_tok / 1e9
    c = {"config": config}
    return [
        ctx.row(SUITE, f"{case}/plain_ms", plain_ms, "ms", reference=ref_ms, reference_value=plain_ms,
                higher_is_better=False, samples=[s * 1e3 for s in plain_s], **c),
        ctx.row(SUITE, f"{case}/lightning_ms", lit_ms, "ms", reference=ref_ms, reference_value=plain_ms,
                higher_is_better=False, samples=[s * 1e3 for s in lit_s], note=loss_note, **c),
        ctx.row(SUITE, f"{case}/lightning_over_plain", lit_ms / plain_ms, "x", reference=ref_ms,
                reference_value=1.0, higher_is_better=False, note="Lightning step time / plain loop step time", **c),
        ctx.row(SUITE, f"{case}/plain_tok_s", plain_tok, "tok/s", reference=ref_tok, reference_value=plain_tok,
                higher_is_better=True, **c),
        ctx.row(SUITE, f"{case}/lightning_tok_s", lit_tok, "tok/s", reference=ref_tok, reference_value=plain_tok,
                higher_is_better=True, **c),
        ctx.row(SUITE, f"{case}/matmul_peak_gflops", peak, "GFLOP/s", reference=ref_peak, reference_value=peak,
                higher_is_better=True, samples=peak_samples, note=f"{peak_n}^3 {peak_dtype} matmul", **c),
        ctx.row(SUITE, f"{case}/plain_model_gflops", plain_gf, "GFLOP/s", reference=ref_peak, reference_value=peak,
                higher_is_better=True, note=f"ratio = MFU; {flops_tok / 1e6:.2f} MFLOP per token", **c),
        ctx.row(SUITE, f"{case}/lightning_model_gflops", lit_gf, "GFLOP/s", reference=ref_peak, reference_value=peak,
                higher_is_better=True, note="ratio = MFU", **c),
        ctx.row(SUITE, f"{case}/plain_mfu", plain_gf / peak, "fraction", reference=ref_peak, reference_value=1.0,
                higher_is_better=True, note="model FLOP/s / measured matmul peak", **c),
        ctx.row(SUITE, f"{case}/lightning_mfu", lit_gf / peak, "fraction", reference=ref_peak, reference_value=1.0,
                higher_is_better=True, note="model FLOP/s / measured matmul peak", **c),
    ]  # fmt: skip
