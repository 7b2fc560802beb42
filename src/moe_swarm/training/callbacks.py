"""Callbacks: token throughput, expert-load heatmaps, a loud stop on a non-finite loss, final-step
validation, a step-budget progress bar (plain progress lines when stdout is not a terminal), and
metrics lines for a supervising process."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar

from moe_swarm.store.layout import format_metrics_line
from moe_swarm.store.summary import fmt_number


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The entries of a Lightning metrics dict that convert to float."""
    out = {}
    for k, v in metrics.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


class TokenThroughput(Callback):
    """Logs ``train/tokens_per_s``: real (non-pad) tokens per wall-clock second, per rank, per step."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self.tokens = 0
        self.seconds = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch: dict, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: dict, batch_idx: int) -> None:
        if self._t0 is None:
            return
        dt = time.perf_counter() - self._t0
        mask = batch.get("attention_mask")
        n = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        self.tokens += n
        self.seconds += dt
        pl_module.log("train/tokens_per_s", n / max(dt, 1e-9), batch_size=batch["input_ids"].shape[0])

    @property
    def mean_tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def expert_load_scale(num_experts: int) -> float:
    """The colour-scale maximum of every expert-load plot of a run: three times the uniform share
    (capped at 1), so plots of different steps compare by colour; larger shares saturate."""
    return min(1.0, 3.0 / num_experts)


def plot_expert_load(share: Any, step: int, layer_ids: list[int]):
    """A (MoE layer x expert) heatmap of token shares with integer ticks and a fixed colour scale."""
    plt = _pyplot()
    n_layers, e = share.shape
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * e + 2), max(2.5, 0.5 * n_layers + 1.5)))
    im = ax.imshow(share, aspect="auto", cmap="viridis", vmin=0.0, vmax=expert_load_scale(e))
    ax.set_xticks(range(e))
    ax.set_yticks(range(n_layers), [str(i) for i in layer_ids])
    ax.set_xlabel("expert")
    ax.set_ylabel("layer (MoE blocks)")
    ax.set_title(f"validation token share per expert, step {step} (uniform = {1 / e:.3f})")
    fig.colorbar(im, ax=ax, extend="max")
    fig.tight_layout()
    return fig


class ExpertLoadHeatmap(Callback):
    """Writes a (layer x expert) heatmap of validation token shares at the end of each validation.

    Files: ``<dirpath>/expert_load_step{N}.png`` and ``<dirpath>/expert_load.png`` (the latest). All
    plots of a run share one colour scale (:func:`expert_load_scale`), so steps compare by colour.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.last_path: Path | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts = getattr(pl_module, "val_expert_counts", None)
        if counts is None or counts.numel() == 0 or trainer.sanity_checking:
            return
        counts = trainer.strategy.reduce(counts.clone().float(), reduce_op="sum")
        if not trainer.is_global_zero:
            return
        share = (counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)).cpu().numpy()
        blocks = getattr(getattr(pl_module, "model", None), "blocks", None)
        layer_ids = [i for i, b in enumerate(blocks or []) if getattr(b, "is_moe", False)]
        if len(layer_ids) != share.shape[0]:
            layer_ids = list(range(share.shape[0]))
        fig = plot_expert_load(share, trainer.global_step, layer_ids)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"expert_load_step{trainer.global_step}.png"
        fig.savefig(path, dpi=80)
        fig.savefig(self.dirpath / "expert_load.png", dpi=80)
        _pyplot().close(fig)
        self.last_path = path


class LossCurve(Callback):
    """Writes ``<dirpath>/loss.png``: training loss per step and validation loss at each validation
    (rank 0), refreshed after every validation and at the end of training."""

    def __init__(self, dirpath: str, train_key: str = "train/loss", val_key: str = "val/loss") -> None:
        self.dirpath = Path(dirpath)
        self.train_key, self.val_key = train_key, val_key
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.path: Path | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        value = trainer.callback_metrics.get(self.train_key)
        if value is not None and trainer.is_global_zero:
            self.train.append((trainer.global_step, float(value)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.val_key)
        if value is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.val.append((trainer.global_step, float(value)))
        self._write()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._write()

    def _write(self) -> None:
        if not self.train and not self.val:
            return
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        if self.train:
            ax.plot(*zip(*self.train), lw=1, alpha=0.8, label=self.train_key)
        if self.val:
            ax.plot(*zip(*self.val), "o-", label=self.val_key)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats/token)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        self.dirpath.mkdir(parents=True, exist_ok=True)
        self.path = self.dirpath / "loss.png"
        fig.savefig(self.path, dpi=80)
        plt.close(fig)


class NonFiniteLossGuard(Callback):
    """Stops the run with a clear error on a NaN/inf training loss, before the bad step is applied.

    Raising in ``on_before_backward`` means no optimizer step and no checkpoint of the broken
    state: the last good ``last.ckpt`` stays as it was.
    """

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"training loss became {value} at global step {trainer.global_step}; stopping. "
                "The last good checkpoint is left untouched. Try a lower learning rate, gradient clipping "
                "(trainer.gradient_clip_val) or precision=32-true, then resume with the same run_id."
            )


class StepProgressBar(RichProgressBar):
    """Rich progress bar for step-budgeted runs: "train" instead of "Epoch 0/-2" (max_epochs=-1), a
    total bounded by ``max_steps``, no ``v_num``, and numbers a person reads (4 significant digits,
    integers with thousands separators)."""

    def _get_train_description(self, current_epoch: int) -> str:
        desc = f"train (max_steps={self.trainer.max_steps})" if self.trainer.max_steps > 0 else "train"
        return f"{desc:{len(self.validation_description)}}"

    @property
    def total_train_batches(self) -> int | float:
        total = super().total_train_batches
        if self.trainer.max_steps > 0:
            return min(total, self.trainer.max_steps * self.trainer.accumulate_grad_batches)
        return total

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return {k: fmt_number(v) if isinstance(v, (int, float)) else v for k, v in items.items()}


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressLines(ProgressBar):
    """Progress for logs (``> log``, ``| tee``, nohup, ``kubectl logs``, CI), where a bar that redraws
    itself prints nothing until the end: one plain line every ``every_n_steps`` optimizer steps (default:
    a twentieth of ``max_steps``) or ``every_s`` seconds, whichever comes first, and at the last step:

        step 120/300 (40%)  loss 2.314  tokens/s 5,120  elapsed 0:42  ETA 1:03

    A ProgressBar subclass, so Lightning adds no bar of its own; chosen instead of the bar when stdout is
    not a terminal (:func:`moe_swarm.training.trainer.build_callbacks`)."""

    def __init__(self, every_n_steps: int = 0, every_s: float = 30.0, stream: Any = None) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.every_s = every_s
        self.stream = stream
        self._enabled = True
        self._t0 = 0.0
        self._start_step = 0
        self._tokens = 0
        self._last_step = -1
        self._last_t = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self._last_t = time.monotonic()
        self._start_step = self._last_step = trainer.global_step
        self._tokens = 0

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        if isinstance(batch, dict) and "input_ids" in batch:
            mask = batch.get("attention_mask")
            self._tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        step, now = trainer.global_step, time.monotonic()
        if not self._enabled or not trainer.is_global_zero or step == self._last_step:
            return
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else 0
        every = self.every_n_steps or max(1, max_steps // 20 if max_steps else 50)
        due = step - self._last_step >= every or now - self._last_t >= self.every_s
        if due or (max_steps and step >= max_steps):
            self._last_step, self._last_t = step, now
            print(
                self.line(trainer, step, max_steps, now - self._t0),
                file=self.stream or sys.stdout,
                flush=True,
            )

    def line(self, trainer: L.Trainer, step: int, max_steps: int, elapsed: float) -> str:
        done = step - self._start_step
        parts = [f"step {step}/{max_steps} ({100 * step // max_steps}%)" if max_steps else f"step {step}"]
        loss = scalar_metrics(trainer.callback_metrics).get("train/loss")
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        if elapsed > 0:
            parts.append(f"tokens/s {self._tokens / elapsed:,.0f}")
        parts.append(f"elapsed {_duration(elapsed)}")
        if max_steps and done > 0:
            parts.append(f"ETA {_duration(elapsed / done * max(0, max_steps - step))}")
        return "  ".join(parts)


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


class ModelSize(Callback):
    """One line at the start of fit: total and per-token active parameters (instead of Lightning's
    model-summary table, whose FLOPs column reads 0 without an example input)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", None)
        if not trainer.is_global_zero or not hasattr(model, "count_parameters"):
            return
        pc = model.count_parameters()
        print(f"model: {pc.total:,} parameters, {pc.active:,} active per token", flush=True)


class FinalStepValidation(Callback):
    """Makes fit validate once at its final step, also when ``max_steps`` is not a multiple of
    ``val_check_interval``; records the step of the latest validation in ``validated_step``.

    At the optimizer step that reaches ``max_steps`` it sets ``trainer.should_stop``, which Lightning
    answers with one validation run inside fit (so checkpoints, loggers and the summary all see the
    final-step metrics), then ends the fit as ``max_steps`` would.
    """

    def __init__(self) -> None:
        self.validated_step: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps and not trainer.fast_dev_run:
            trainer.should_stop = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated_step = trainer.global_step


class MetricsLines(Callback):
    """Prints metrics lines (:mod:`moe_swarm.store.layout`) on stdout (rank 0) for a supervising process.

    The gRPC sidecar sets ``MOE_SWARM_METRICS_LINES=1`` for its training children and turns these
    lines into WatchJob metric events. Every ``log_every_n_steps`` a line with the training metrics
    (validation values are left out: they would be stale copies), and after each validation a line
    with everything, validation included.
    """

    def _emit(self, trainer: L.Trainer, *, with_validation: bool) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {
            k: v
            for k, v in scalar_metrics(trainer.callback_metrics).items()
            if with_validation or not k.startswith("val/")
        }
        metrics["trainer/global_step"] = trainer.global_step
        print(format_metrics_line(metrics), flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self._emit(trainer, with_validation=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._emit(trainer, with_validation=True)
