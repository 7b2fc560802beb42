"""`moe-swarm-train`: compose the Hydra config, instantiate data/module/trainer, fit, summarise.

moe-swarm-train experiment=quickstart
moe-swarm-train -m model.moe.num_experts=4,8 trainer.max_steps=20     # a sweep
RUN_ID=my-run moe-swarm-train experiment=text_small               # restart = resume
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from moe_swarm.cluster import ClusterSpec
from moe_swarm.config import config_dir, register_resolvers
from moe_swarm.model.config import TransformerConfig

log = logging.getLogger("moe_swarm.train")
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM: "stopped on request, checkpoint saved", never "succeeded"


def _job_suffix() -> str | None:
    """In a Hydra multirun, each job gets its own run id: <run_id>-<job number>."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return str(hc.job.num) if hc.mode == RunMode.MULTIRUN else None


def prepare_run(cfg: DictConfig) -> Path:
    """Fix the run id (sweep jobs get a suffix), export it for DDP children, create the run dir."""
    suffix = _job_suffix()
    with open_dict(cfg):
        run_id = str(cfg.run_id)
        if suffix is not None and not run_id.endswith(f"-{suffix}"):
            run_id = f"{run_id}-{suffix}"
        cfg.run_id = run_id
    # Lightning's DDP launcher re-runs this command in child processes: they must see the same id.
    os.environ["RUN_ID"] = run_id
    run_dir = Path(cfg.run_dir).resolve()
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def check_config(cfg: DictConfig) -> None:
    """Cross-group checks Hydra cannot express; each error says which keys to change."""
    block = cfg.data.get("block_size")
    if block is not None and block > cfg.model.max_seq_len:
        raise ValueError(
            f"data.block_size={block} exceeds model.max_seq_len={cfg.model.max_seq_len}; "
            "lower data.block_size or raise model.max_seq_len"
        )
    # Strict model keys and values (a typo such as model.num_expert fails here, before training).
    TransformerConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True))


def apply_cluster(cfg: DictConfig) -> ClusterSpec:
    """Validate node/device counts against the trainer and export the rendezvous for Lightning."""
    from moe_swarm.cluster import ClusterSpec, apply_to_environ, check_matches_trainer

    spec = ClusterSpec.from_config(cfg.cluster, os.environ, socket.gethostname())
    check_matches_trainer(spec, cfg.trainer.num_nodes, cfg.trainer.devices)
    apply_to_environ(spec)
    return spec


# Node start-up check timeout when the trainer config sets no DDP timeout (trainer.strategy.timeout).
DEFAULT_RENDEZVOUS_TIMEOUT_S = 300.0


def rendezvous_timeout_s(cfg: DictConfig) -> float:
    seconds = OmegaConf.select(cfg, "trainer.strategy.timeout.seconds", default=None)
    return float(seconds) if seconds is not None else DEFAULT_RENDEZVOUS_TIMEOUT_S


def build_callbacks(cfg: DictConfig, has_logger: bool, expected_world_size: int | None = None) -> list:
    callbacks = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is None or "_target_" not in cb_cfg:
            continue
        target = str(cb_cfg._target_)
        if not has_logger and target.endswith("LearningRateMonitor"):
            continue  # it raises without a logger
        if not cfg.trainer.get("enable_progress_bar", True) and target.endswith("ProgressBar"):
            continue
        if cfg.trainer.get("fast_dev_run") and target.endswith("ModelCheckpoint"):
            continue
        callbacks.append(hydra.utils.instantiate(cb_cfg))
        log.debug("callback %s: %s", name, target)
    if os.environ.get("MOE_SWARM_METRICS_LINES") == "1":  # set by the gRPC sidecar for its children
        from moe_swarm.lit.callbacks import MetricsLines

        callbacks.append(MetricsLines())
    callbacks.append(
        hydra.utils.instantiate(
            {"_target_": "moe_swarm.lit.fault.CheckpointOnSigterm", "dirpath": f"{cfg.run_dir}/checkpoints"}
        )
    )
    from moe_swarm.lit.fault import WorldSizeCheck

    callbacks.append(WorldSizeCheck(expected_world_size))
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    return [
        hydra.utils.instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg and "_target_" in lg
    ]


def last_checkpoint(run_dir: Path) -> Path | None:
    path = run_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns the summary that is also written to <run_dir>/summary.json."""
    import lightning as L
    import torch
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from moe_swarm.lit.fault import AtomicCheckpointIO, check_nodes_agree

    run_dir = prepare_run(cfg)
    check_config(cfg)
    spec = apply_cluster(cfg)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))

    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    module = hydra.utils.instantiate(cfg.module, _convert_="all")
    # The resolved config travels in the checkpoint as plain data (never instantiated from there).
    module.hparams["run_config"] = OmegaConf.to_container(cfg, resolve=True)
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, has_logger=bool(loggers), expected_world_size=spec.world_size)
    # Checkpoints are written to a temp file in their folder, fsynced, then renamed: never torn.
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )

    resume = last_checkpoint(run_dir) if cfg.resume else None
    # Several nodes: all must agree on nodes, devices, run id and resuming before DDP starts.
    check_nodes_agree(
        spec, run_id=cfg.run_id, resuming=resume is not None, timeout_s=rendezvous_timeout_s(cfg)
    )
    start_metrics: dict[str, float] = {}
    if resume is None and cfg.validate_before_fit and not cfg.trainer.get("fast_dev_run"):
        start_metrics = scalar_metrics(trainer.validate(module, datamodule=datamodule, verbose=False)[0])
    if resume is not None:
        log.info("resuming run %s from %s", cfg.run_id, resume)

    t0 = time.perf_counter()
    status = "succeeded"
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    except SIGTERMException:
        status = "stopped"  # CheckpointOnSigterm has written last.ckpt
    wall = time.perf_counter() - t0

    end_metrics = scalar_metrics(trainer.callback_metrics)
    summary = make_summary(cfg, module, trainer, run_dir, start_metrics, end_metrics, wall, status, resume)
    if trainer.is_global_zero:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary)
    if status == "stopped":
        raise SystemExit(SIGTERM_EXIT_CODE)
    return summary


def make_summary(
    cfg,
    module,
    trainer,
    run_dir: Path,
    start: dict,
    end: dict,
    wall: float,
    status: str,
    resumed_from: Path | None,
) -> dict[str, Any]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from moe_swarm.lit.callbacks import ExpertLoadHeatmap, TokenThroughput

    pc = module.model.count_parameters()
    ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    tput = next((c for c in trainer.callbacks if isinstance(c, TokenThroughput)), None)
    heat = next((c for c in trainer.callbacks if isinstance(c, ExpertLoadHeatmap)), None)
    last = last_checkpoint(run_dir)
    metric = cfg.optimized_metric
    return {
        "run_id": cfg.run_id,
        "status": status,
        "run_dir": str(run_dir),
        "checkpoint": str(last) if last else None,
        "best_checkpoint": (ckpt_cb.best_model_path or None) if ckpt_cb else None,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "global_step": trainer.global_step,
        "wall_seconds": round(wall, 2),
        "tokens_per_s": round(tput.mean_tokens_per_s, 1) if tput and tput.seconds > 0 else None,
        "params": {"total": pc.total, "active": pc.active, "embedding": pc.embedding},
        "optimized_metric": metric,
        "metric_start": start.get(metric),
        "metric_end": end.get(metric),
        "metrics_start": start,
        "metrics": end,
        "load_max_over_mean": end.get("router/load_max_over_mean"),
        "logs": [str(lg.log_dir) for lg in trainer.loggers if getattr(lg, "log_dir", None)],
        "plots": str(heat.dirpath) if heat and heat.last_path else None,
        "overrides": _overrides(),
    }


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def print_summary(s: dict[str, Any]) -> None:
    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [
        "",
        f"== moe-swarm run {s['run_id']}: {s['status']} after {s['global_step']} steps ({s['wall_seconds']} s)",
        f"   parameters: {s['params']['total']:,} total, {s['params']['active']:,} active per token",
        f"   {s['optimized_metric']}: {fmt(s['metric_start'])} at start -> {fmt(s['metric_end'])} at end",
        f"   throughput: {fmt(s['tokens_per_s'])} tokens/s; load max/mean: {fmt(s['load_max_over_mean'])}",
        f"   checkpoint: {s['checkpoint']}",
        f"   logs: {', '.join(s['logs']) or '-'}   plots: {s['plots'] or '-'}",
        f"   summary: {s['run_dir']}/summary.json",
        "",
    ]
    print("\n".join(lines), flush=True)


def write_sweep_table(sweep_dir: Path) -> Path | None:
    """Collect every job's summary.json under a sweep's runs into one markdown table."""
    rows = []
    for path in sorted(sweep_dir.parent.parent.glob(f"{sweep_dir.name}-*/summary.json")):
        s = json.loads(path.read_text())
        rows.append(
            (
                s["run_id"],
                " ".join(s.get("overrides") or []),
                s["optimized_metric"],
                s["metric_end"],
                s["status"],
            )
        )
    if not rows:
        return None
    out = sweep_dir / "results.md"
    lines = ["| run_id | overrides | metric | final value | status |", "|---|---|---|---|---|"]
    lines += [f"| {r} | {o} | {m} | {v if v is None else f'{v:.4f}'} | {st} |" for r, o, m, v, st in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    (sweep_dir / "results.json").write_text(
        json.dumps(
            [{"run_id": r, "overrides": o, "metric": m, "value": v, "status": st} for r, o, m, v, st in rows],
            indent=2,
        )
    )
    return out


register_resolvers()


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    summary = train(cfg)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        table = write_sweep_table(
            Path(cfg.paths.runs_dir).resolve() / "sweeps" / str(cfg.run_id).rsplit("-", 1)[0]
        )
        if table:
            print(f"sweep results so far: {table}", flush=True)
    value = summary.get("metric_end")
    return float(value) if value is not None else None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _hydra_main()


if __name__ == "__main__":
    sys.exit(main())
