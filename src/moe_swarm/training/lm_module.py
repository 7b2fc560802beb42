"""MoELanguageModel: the LightningModule that trains the MoE decoder (LM loss + router aux losses)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torchmetrics import MeanMetric

from moe_swarm.data.tasks import get_task, greedy_exact_match
from moe_swarm.data.tokenizer import ByteTokenizer
from moe_swarm.hf.tokenizer_files import checkpoint_tokenizer
from moe_swarm.model.router import balance_loss, dead_experts, load_cv, max_over_mean
from moe_swarm.model.transformer import ModelOutput, MoETransformer, TransformerConfig
from moe_swarm.scale.parallel.config import ParallelConfig, ParallelConfigError

LN2 = math.log(2.0)
BALANCE_SCOPES = ("micro", "global")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases and embeddings (tied head included)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.startswith("embed.") or "norm" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class MoELanguageModel(L.LightningModule):
    """Next-token LM training for :class:`MoETransformer` (MoE or dense FFN).

    Loss = LM cross-entropy + ``aux_loss_coef`` * load-balancing loss + ``z_loss_coef`` * z-loss
    (each averaged over MoE layers). In ``sigmoid_bias`` routing, router biases are updated after
    every optimizer step from token counts summed across ranks. Validation reports loss,
    bits-per-byte and perplexity; with a ``task`` it also reports greedy exact match.

    ``balance_scope``: ``micro`` computes the balance loss's expert fractions f on each micro-batch
    of each rank (Switch); ``global`` on the global batch (Qwen 2025, "global-batch load
    balancing"): routed counts are all-reduced over every rank (data-parallel and expert-parallel
    alike) and accumulated over the micro-batches of the optimizer step, the running sum as in
    Megatron-LM's ``global_aux_loss`` (micro-batch m sees micro-batches 1..m; the last sees them
    all). P keeps the local gradient. Router health (per MoE layer, ``router/layer{i}/...``): dead
    experts (no token over the last ``health_window`` optimizer steps, all ranks), routing entropy,
    the coefficient of variation and the max/mean ratio of the step's load.
    """

    def __init__(
        self,
        model: dict | DictConfig,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        weight_decay: float = 0.1,
        aux_loss_coef: float = 1e-2,
        z_loss_coef: float = 1e-3,
        bias_update_gamma: float = 1e-3,
        compile: bool = False,
        eval_task: dict | DictConfig | None = None,
        eval_problems: int = 128,
        eval_max_new_tokens: int = 16,
        eval_batch_size: int = 128,
        parallel: dict | DictConfig | None = None,
        balance_scope: str = "micro",
        health_window: int = 100,
    ) -> None:
        super().__init__()
        if balance_scope not in BALANCE_SCOPES:
            raise ValueError(f"module.balance_scope must be one of {BALANCE_SCOPES}, got {balance_scope!r}")
        if health_window < 1:
            raise ValueError(f"module.health_window must be >= 1, got {health_window}")
        model = _plain(model)
        task = _plain(eval_task)
        # model.init_from=DIR: architecture from DIR/config.json, weights and tokenizer from the folder.
        init_from = None
        if isinstance(model, dict) and "init_from" in model:
            model = dict(model)
            init_from = model.pop("init_from")
        hf_meta = None
        if init_from:
            from moe_swarm.hf.init_from import init_model_deferred

            # Built on the meta device and checked here; configure_model fills it (each rank its slices).
            net, hf_meta = init_model_deferred(init_from, model)
            model = net.cfg.to_dict()
        else:
            # Strict: a misspelt key (``+model.num_expert=16``) fails here, before any training.
            net = MoETransformer(TransformerConfig.from_dict(model))
        self.save_hyperparameters(
            {
                "model": model,
                "weight_decay": weight_decay,
                "aux_loss_coef": aux_loss_coef,
                "z_loss_coef": z_loss_coef,
                "bias_update_gamma": bias_update_gamma,
                "compile": compile,
                "eval_task": task,
                "eval_problems": eval_problems,
                "eval_max_new_tokens": eval_max_new_tokens,
                "eval_batch_size": eval_batch_size,
                "balance_scope": balance_scope,
                "health_window": health_window,
            }
        )
        if hf_meta is not None:  # checkpoints carry the family and tokenizer (export, inference)
            self.hparams["hf"] = hf_meta
        self.model = net
        self._init_from = str(init_from) if init_from else None  # weights still to read (meta model)
        # Layout under trainer=model_parallel (FSDP2 + expert parallel); checked against the model now.
        self.parallel = ParallelConfig.from_dict(_plain(parallel))
        if self.model.moe_layers:
            self.parallel.check_experts(self.model.cfg.moe.num_experts)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.tokenizer = checkpoint_tokenizer({"hf": hf_meta}) if hf_meta else ByteTokenizer()
        self.task = get_task(task["name"], **task.get("kwargs", {})) if task else None
        self.val_loss = MeanMetric()
        self.val_em = MeanMetric()
        n_moe = len(self.model.moe_layers)
        e = self.model.cfg.moe.num_experts
        # Token counts since the last optimizer step (bias update) and over validation (heatmap).
        self.register_buffer("_step_counts", torch.zeros(n_moe, e), persistent=False)
        self.register_buffer("val_expert_counts", torch.zeros(n_moe, e), persistent=False)
        # Global-batch balance: routed counts summed over ranks and the step's micro-batches so far.
        self.register_buffer("balance_counts", torch.zeros(n_moe, e), persistent=False)
        # Router health: kept counts (all ranks) per optimizer step, a ring over health_window steps.
        self.register_buffer("_health_counts", torch.zeros(health_window, n_moe, e), persistent=False)
        self._health_step = -1
        self._moe_layer_ids = [i for i, b in enumerate(self.model.blocks) if b.is_moe]
        self.train_expert_counts = torch.zeros(n_moe, e)
        self._train_seq_len: int | None = None  # for mfu()

    def configure_model(self) -> None:
        from moe_swarm.scale.parallel import is_parallelized, parallelize

        if self.hparams.compile and not is_parallelized(self.model):
            for block in self.model.blocks:
                block.compile()
        mesh = self._device_mesh  # set by ModelParallelStrategy (trainer=model_parallel) only
        if mesh is not None and not is_parallelized(self.model):  # idempotent: validate, then fit
            if self.task is not None and self.hparams.eval_problems > 0:
                raise ParallelConfigError(
                    "greedy exact match during validation (module.eval_problems > 0 with a task) cannot run "
                    "under trainer=model_parallel: ranks decode different numbers of steps, and every FSDP2/EP "
                    "forward is a collective. Set module.eval_problems=0 and score the checkpoint with "
                    "moe-swarm-eval (it reads the sharded last.ckpt)."
                )
            parallelize(self.model, mesh, self.parallel)
        elif mesh is None and self.parallel.expert_parallel_size > 1:
            raise ParallelConfigError(
                f"module.parallel.expert_parallel_size={self.parallel.expert_parallel_size} needs "
                "trainer=model_parallel (Lightning's ModelParallelStrategy); this trainer has no device mesh"
            )
        if self._init_from is not None:  # model.init_from: read the weights once the layout is known
            from moe_swarm.hf.parallel_load import load_local_shards

            load_local_shards(self.model, self._init_from, device=self.device)
            self._init_from = None

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: Any = None,
        gradient_clip_algorithm: Any = None,
    ) -> None:
        """Sharded experts and the rest live on different meshes: clip by one norm over both."""
        from moe_swarm.scale.parallel import clip_grad_norm_, is_parallelized

        if not (gradient_clip_val and is_parallelized(self.model)):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(
                f"trainer.gradient_clip_algorithm={gradient_clip_algorithm!r} is not supported with "
                "trainer=model_parallel; use 'norm'"
            )
        clip_grad_norm_(self.model.parameters(), float(gradient_clip_val))

    # ---- training ---------------------------------------------------------------------------
    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        pad_mask: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> ModelOutput:
        return self.model(idx, targets, pad_mask=pad_mask, document_ids=document_ids)

    def mfu(self, tokens_per_s: float, peak_flops: float | None = None) -> float | None:
        """Model FLOPs utilisation of ``tokens_per_s`` (per device) against ``peak_flops``, by default
        the device's peak for the trainer's precision as Lightning knows it (None where unknown, e.g.
        CPUs). FLOPs per token: :meth:`MoETransformer.train_flops_per_token` at the training length."""
        if peak_flops is None:
            from lightning.fabric.utilities.throughput import get_available_flops

            precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
            dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision.split("-")[0], torch.float32)
            peak_flops = get_available_flops(self.device, dtype)
        if not peak_flops or not tokens_per_s or not math.isfinite(tokens_per_s):
            return None
        seq_len = self._train_seq_len or self.model.cfg.max_seq_len
        return tokens_per_s * self.model.train_flops_per_token(seq_len) / peak_flops

    def _shared_step(self, batch: dict[str, Tensor], train: bool = False) -> tuple[ModelOutput, Tensor]:
        out = self(
            batch["input_ids"], batch["targets"], batch.get("attention_mask"), batch.get("document_ids")
        )
        balance = out.load_balance_loss
        if train and out.aux and self.hparams.get("balance_scope", "micro") == "global":
            balance = self.global_balance_loss(out)
        loss = out.loss + self.hparams.aux_loss_coef * balance + self.hparams.z_loss_coef * out.z_loss
        return out, loss

    def global_balance_loss(self, out: ModelOutput) -> Tensor:
        """The balance loss with f over the global batch (``balance_scope=global``), mean over layers.

        Adds this micro-batch's routed counts, summed over all ranks, to ``balance_counts`` (reset at
        each optimizer step); one all-reduce of an (L, E) tensor per micro-batch.
        """
        local = torch.stack([a.routed_counts for a in out.aux]).detach().float()
        if self._trainer is not None and self.trainer.world_size > 1:
            local = self.trainer.strategy.reduce(local.clone(), reduce_op="sum")
        self.balance_counts += local
        probs = torch.stack([a.mean_probs for a in out.aux])
        return balance_loss(self.balance_counts, probs).mean()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self._train_seq_len = batch["input_ids"].shape[1]
        out, loss = self._shared_step(batch, train=True)
        bs = batch["input_ids"].shape[0]
        means = {"train/loss": out.loss.detach(), "train/total_loss": loss.detach()}
        counts = None
        if out.aux:
            counts = torch.stack([a.counts for a in out.aux])
            self._step_counts += counts
            self.train_expert_counts = self.train_expert_counts.to(counts.device) + counts.detach()
            means.update(
                {
                    "train/aux_loss": out.load_balance_loss.detach(),
                    "train/z_loss": out.z_loss.detach(),
                    "router/entropy": torch.stack([a.entropy for a in out.aux]).mean(),
                    "router/dropped_frac": torch.stack([a.dropped_frac for a in out.aux]).mean(),
                }
            )
            for layer, a in zip(self._moe_layer_ids, out.aux):
                means[f"router/layer{layer}/entropy"] = a.entropy
        metrics = self._global_train_metrics(means, counts)
        self.log("train/loss", metrics.pop("train/loss"), prog_bar=True, batch_size=bs)
        self.log_dict(metrics, batch_size=bs)
        return loss

    def _global_train_metrics(self, means: dict[str, Tensor], counts: Tensor | None) -> dict[str, Tensor]:
        """Step metrics over all ranks in one all-reduce: losses averaged, expert counts summed.

        The load ratio max/mean comes from the summed counts (the whole global batch), not from an
        average of per-rank ratios; on one process this is the plain local value.
        """
        names = list(means)
        flat = torch.stack([means[k].float() for k in names])
        world = self.trainer.world_size if self._trainer is not None else 1
        if counts is not None:
            flat = torch.cat([flat / world, counts.detach().float().reshape(-1)])
        else:
            flat = flat / world
        if world > 1:
            flat = self.trainer.strategy.reduce(flat, reduce_op="sum")
        out = dict(zip(names, flat[: len(names)]))
        if counts is not None:
            total = flat[len(names) :].reshape(counts.shape)
            out["router/load_max_over_mean"] = max_over_mean(total).mean()
            out.update(self._router_health(total))
        return out

    def _router_health(self, total: Tensor) -> dict[str, Tensor]:
        """Per-layer load statistics of this micro-batch's global counts, and dead experts over the window."""
        step = self.global_step
        window = self._health_counts
        if step != self._health_step:  # first micro-batch of a new optimizer step: reuse the oldest slot
            window[step % window.shape[0]].zero_()
            self._health_step = step
        window[step % window.shape[0]] += total.to(window.device)
        dead = dead_experts(window.sum(0))
        cv, ratio = load_cv(total), max_over_mean(total)
        out = {"router/dead_experts": dead.sum().float()}
        for i, layer in enumerate(self._moe_layer_ids):
            out[f"router/layer{layer}/dead_experts"] = dead[i].float()
            out[f"router/layer{layer}/load_cv"] = cv[i]
            out[f"router/layer{layer}/max_over_mean"] = ratio[i]
        return out

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        layers = self.model.moe_layers
        if not layers:
            return
        if layers[0].router.cfg.mode == "sigmoid_bias":
            counts = self._step_counts
            if self.trainer is not None and self.trainer.world_size > 1:
                counts = self.trainer.strategy.reduce(counts.clone(), reduce_op="sum")
            for layer, c in zip(layers, counts):
                layer.router.update_bias(c, self.hparams.bias_update_gamma)
        self._step_counts.zero_()
        self.balance_counts.zero_()

    # ---- validation -------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.val_expert_counts.zero_()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out, _ = self._shared_step(batch)
        n_targets = (batch["targets"] != -100).sum()
        self.val_loss.update(out.loss.detach(), weight=n_targets)
        if out.aux:
            self.val_expert_counts += torch.stack([a.counts for a in out.aux])

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        # Byte-level tokens: nats per token / ln 2 = bits per byte.
        self.log_dict(
            {"val/loss": loss, "val/bpb": loss / LN2, "val/ppl": torch.exp(loss)},
            prog_bar=True,
            sync_dist=False,
        )
        if self.task is not None and self.hparams.eval_problems > 0:
            self.log("val/em", self.exact_match("val"), prog_bar=True, sync_dist=False)

    @torch.no_grad()
    def exact_match(self, split: str = "val") -> Tensor:
        """Greedy exact match (KV-cache generation) on the datamodule's fixed eval subset, sharded over ranks."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "eval_problems"):
            problems = dm.eval_problems(split, self.hparams.eval_problems)
        else:
            problems = self.task.generate(split, self.hparams.eval_problems, seed=0)
        rank, world = (self.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        mine = problems[rank::world]
        was_training = self.model.training
        self.model.eval()
        correct_list = greedy_exact_match(
            self.model,
            mine,
            self.task,
            self.tokenizer,
            self.hparams.eval_max_new_tokens,
            self.hparams.eval_batch_size,
        )
        for correct in correct_list:
            self.val_em.update(torch.tensor(float(correct), device=self.device))
        if not mine:  # keep collective ops balanced across ranks
            self.val_em.update(torch.tensor(0.0, device=self.device), weight=0.0)
        self.model.train(was_training)
        em = self.val_em.compute()
        self.val_em.reset()
        return em

    # ---- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        groups = parameter_groups(self.model, self.hparams.weight_decay)
        if self.optimizer_factory is None:
            optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95))
        else:
            optimizer = self.optimizer_factory(params=groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
