"""`logger=mlflow`: a real tiny training run logs to the default SQLite tracking store under the runs
folder, and MLflow's own client reads the run, its params and its metrics back."""

from __future__ import annotations

import pytest
from conftest import TINY_MUL_BASE, compose_cfg


def test_a_training_run_with_logger_mlflow_is_read_back_by_mlflows_client(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from moe_swarm.cli.train import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    runs = tmp_path / "runs"
    overrides = [o for o in TINY_MUL_BASE if not o.startswith(("logger=", "trainer.max_steps", "run_id="))]
    cfg = compose_cfg("train", [*overrides, "logger=mlflow", "trainer.max_steps=6", "trainer.val_check_interval=3",
                                "trainer.log_every_n_steps=1", "run_id=ml"], runs)  # fmt: skip
    assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{runs}/mlflow.db"
    summary = train(cfg)
    assert summary["global_step"] == 6

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db")
    experiment = client.get_experiment_by_name("moe-swarm")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "ml" and run.data.tags["run_id"] == "ml"
    assert run.info.status == "FINISHED"
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in loss] == sorted(m.step for m in loss) and len(loss) >= 5
    val = client.get_metric_history(run.info.run_id, "val/loss")
    assert val and val[-1].value == pytest.approx(summary["metrics"]["val/loss"], rel=1e-5)
    assert run.data.params  # the module's hyper-parameters
