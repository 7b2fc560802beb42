"""Training framework: config composition, short real runs, resume, sweeps, errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, run_entry_point
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from moe_swarm.cli.train import train
from moe_swarm.config import config_dir
from moe_swarm.data.corpora import load_corpus, write_bin
from moe_swarm.store.checkpoint import load_model

CONF = config_dir()
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TINY = [
    *TINY_MODEL,
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.precision=32-true",
    "module.compile=false",
]
GPU_ONLY = {"gpu_a100", "gpu_h100"}


def compose_cfg(overrides: list[str], tmp_path: Path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.runs_dir={tmp_path}", *overrides])
    return cfg


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_resolves(experiment, tmp_path):
    cfg = compose_cfg([f"experiment={experiment}"], tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert cfg.model.d_model > 0 and cfg.run_dir.startswith(str(tmp_path))


@pytest.mark.parametrize(
    "group",
    ["data", "model", "router", "trainer", "callbacks", "logger", "debug", "hparams_search", "cluster"],
)
def test_every_group_option_composes(group, tmp_path):
    for option in group_options(group):
        extra = (
            {"files": ["data.paths=[x]"], "bin": ["data.bin_path=x"]}.get(option, [])
            if group == "data"
            else []
        )
        cfg = compose_cfg([f"{group}={option}", *extra], tmp_path)
        OmegaConf.resolve(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_every_experiment_on_cpu(experiment, tmp_path):
    overrides = [f"experiment={experiment}", "debug=fdr", *TINY, f"run_id=fdr-{experiment}"]
    if experiment in GPU_ONLY:
        overrides += [
            "data=pydoc",
            "data.max_bytes=200000",
            "model.max_seq_len=128",
            "data.block_size=64",
            "data.num_workers=0",
        ]
    if experiment == "moe_parallel":  # one process here: expert groups of one rank
        overrides.append("module.parallel.expert_parallel_size=1")
    if experiment == "moe_study":  # make moe-study writes its corpus; here a small one of the same kind
        corpus = tmp_path / "corpus.bin"
        write_bin(load_corpus("pydoc", max_bytes=120_000), corpus)
        overrides += [f"data.bin_path={corpus}", "data.block_size=64", "model.max_seq_len=64"]
    if experiment == "reasoning_steps_task":  # the task is the user's choice: a built-in one here
        overrides += ["data.task=mul", "data.task_kwargs={scratchpad: true}"]
    cfg = compose_cfg(overrides, tmp_path)
    summary = train(cfg)
    assert summary["status"] == "succeeded" and summary["global_step"] == 1


def test_short_run_learns_checkpoints_and_resumes(tmp_path):
    base = [
        "experiment=quickstart",
        *TINY,
        "run_id=resume-me",
        "trainer.val_check_interval=10",
        "data.val_windows=4",
        "module.scheduler.warmup_steps=2",
    ]
    first = train(compose_cfg([*base, "trainer.max_steps=10"], tmp_path))
    ckpt = Path(first["checkpoint"])
    assert ckpt.is_file() and first["global_step"] == 10
    assert first["metric_end"] < first["metric_start"], "val bpb must drop over 10 steps"
    assert json.loads((tmp_path / "resume-me" / "summary.json").read_text())["run_id"] == "resume-me"
    assert list((tmp_path / "resume-me" / "plots").glob("expert_load*.png")), "expert-load heatmap missing"
    second = train(compose_cfg([*base, "trainer.max_steps=20"], tmp_path))
    assert second["resumed_from"] == str(ckpt)
    assert second["global_step"] == 20
    assert torch.load(ckpt, weights_only=True)["global_step"] == 20


def test_checkpoint_loads_back_for_generation(tmp_path):
    s = train(
        compose_cfg(
            [
                "experiment=quickstart",
                *TINY,
                "run_id=gen",
                "trainer.max_steps=3",
                "trainer.val_check_interval=3",
                "data.val_windows=2",
            ],
            tmp_path,
        )
    )
    model, hparams = load_model(s["checkpoint"])
    assert hparams["model"]["d_model"] == 32 and hparams["global_step"] == 3
    assert hparams["run_config"]["run_id"] == "gen"
    out = model.generate(torch.tensor([[257, 72, 105]]), 5)
    assert out.tokens.shape == (1, 5)


def test_reasoning_run_reports_exact_match(tmp_path):
    s = train(
        compose_cfg(
            [
                "experiment=reasoning_mul",
                *TINY,
                "run_id=em",
                "trainer.max_steps=2",
                "trainer.val_check_interval=2",
                "trainer.limit_val_batches=1",
            ],
            tmp_path,
        )
    )
    assert 0.0 <= s["metrics"]["val/em"] <= 1.0 and s["optimized_metric"] == "val/em"
    _, hparams = load_model(s["checkpoint"])  # weights_only load: no pickled config objects inside
    assert hparams["eval_task"]["name"] == "mul"


def test_bits_per_byte_equals_hand_computation(tmp_path):
    from moe_swarm.training.lm_module import MoELanguageModel

    cfg = compose_cfg(["experiment=quickstart", *TINY], tmp_path)
    module = MoELanguageModel(model=OmegaConf.to_container(cfg.model, resolve=True))
    batch = {"input_ids": torch.randint(0, 256, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.bool)}
    batch["targets"] = batch["input_ids"].roll(-1, 1)
    batch["targets"][0, 4:] = -100
    module.eval()
    with torch.no_grad():
        module.validation_step(batch, 0)
        logits = module.model(batch["input_ids"]).logits
    logged = {}
    module.log_dict = lambda d, **kw: logged.update({k: float(v) for k, v in d.items()})
    module.on_validation_epoch_end()
    t = batch["targets"]
    nll = (
        torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), t.reshape(-1), ignore_index=-100, reduction="sum"
        )
        / (t != -100).sum()
    )
    assert logged["val/bpb"] == pytest.approx(nll.item() / math.log(2), rel=1e-5)
    assert logged["val/ppl"] == pytest.approx(math.exp(nll.item()), rel=1e-5)


def test_sigmoid_bias_router_updates_bias_during_training(tmp_path):
    cfg = compose_cfg(
        [
            "experiment=quickstart",
            *TINY,
            "router=sigmoid_bias",
            "run_id=bias",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "data.val_windows=2",
        ],
        tmp_path,
    )
    s = train(cfg)
    model, _ = load_model(s["checkpoint"])
    bias = model.moe_layers[0].router.bias
    assert bias.abs().sum() > 0, "bias must move after optimizer steps"
    assert torch.allclose(bias.abs(), torch.full_like(bias, bias.abs().max()), atol=3 * 1e-3 + 1e-6)


def test_block_size_longer_than_model_context_is_a_clear_error(tmp_path):
    cfg = compose_cfg(["experiment=quickstart", *TINY, "data.block_size=512"], tmp_path)
    with pytest.raises(ValueError, match="max_seq_len"):
        train(cfg)


def _run_cli(args: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_entry_point("moe_swarm.cli.train", args, tmp_path, timeout)


@pytest.mark.parametrize(
    "override,message",
    [("model.no_such_key=1", "no_such_key"), ("trainer.max_steps=abc", "max_steps")],
)
def test_bad_override_exits_nonzero_with_hydras_message(override, message, tmp_path):
    proc = _run_cli(["experiment=quickstart", override], tmp_path, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout


@pytest.mark.slow
def test_two_job_multirun_leaves_one_results_table_with_final_step_numbers(tmp_path):
    """max_steps below val_check_interval (the README's sweep): every row still has a number."""
    tiny = [o for o in TINY if not o.startswith("model.moe.num_experts")]
    proc = _run_cli(
        [
            "-m",
            "experiment=quickstart",
            *tiny,
            "model.moe.num_experts=2,4",
            "trainer.max_steps=3",
            "data.val_windows=2",
            "run_id=sweep",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = tmp_path / "sweeps" / "sweep" / "results.md"
    text = table.read_text()
    assert "model.moe.num_experts=2" in text and "model.moe.num_experts=4" in text and "None" not in text
    rows = json.loads((tmp_path / "sweeps" / "sweep" / "results.json").read_text())
    assert len(rows) == 2 and all(math.isfinite(r["value"]) and r["global_step"] == 3 for r in rows)


@pytest.mark.slow
def test_optuna_preset_completes_trials_with_tiny_max_steps(tmp_path):
    tiny = [o for o in TINY if not o.startswith("model.moe.num_experts")]
    proc = _run_cli(
        [
            "-m",
            "hparams_search=optuna",
            "experiment=quickstart",
            *tiny,
            "trainer.max_steps=3",
            "data.val_windows=2",
            "run_id=opt",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=1",
        ],
        tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Best value" in out or "best_value" in out
    assert "No trials are completed" not in out and "float-castable" not in out
    rows = json.loads((tmp_path / "sweeps" / "opt" / "results.json").read_text())
    assert len(rows) == 2 and all(math.isfinite(r["value"]) for r in rows)


@pytest.mark.slow
def test_configs_are_found_from_an_installed_wheel_in_any_directory(tmp_path, repo_root):
    """Build the wheel, unpack it away from the repo, compose the config from there."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(repo_root),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = wheel_dir.glob("moe_swarm-*.whl")
    site = tmp_path / "site"
    import zipfile

    zipfile.ZipFile(wheel).extractall(site)
    assert (site / "moe_swarm" / "conf" / "train.yaml").is_file()
    code = (
        "import moe_swarm.config as c, hydra; print(c.config_dir());"
        "from hydra import compose, initialize_config_dir;"
        "initialize_config_dir(config_dir=str(c.config_dir()), version_base='1.3');"
        "print(compose('train', overrides=['experiment=quickstart']).trainer.max_steps);"
        "import moe_swarm.scale.k8s as k; print(k.k8s_dir())"
    )
    env = {k: v for k, v in os.environ.items() if k != "MOE_SWARM_CONFIG_DIR"}
    env["PYTHONPATH"] = str(site)
    # -I would drop the venv's site-packages; -P keeps cwd off sys.path. The editable install's
    # path hook is bypassed because PYTHONPATH comes first on sys.path.
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    conf_dir, steps, k8s_tree = out.stdout.split()
    assert conf_dir == str((site / "moe_swarm" / "conf").resolve())
    assert int(steps) > 0
    assert k8s_tree == str(site / "moe_swarm" / "k8s_tree"), (
        "the launcher's Kustomize tree ships in the wheel"
    )


def test_metrics_lines_for_a_supervisor(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOE_SWARM_METRICS_LINES", "1")
    train(
        compose_cfg(
            [
                "experiment=quickstart",
                *TINY,
                "run_id=lines",
                "trainer.max_steps=4",
                "trainer.log_every_n_steps=2",
                "trainer.val_check_interval=4",
                "data.val_windows=2",
            ],
            tmp_path,
        )
    )
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("MOE_SWARM_METRICS ")]
    assert len(lines) >= 2
    last = json.loads(lines[-1].split(" ", 1)[1])
    assert last["trainer/global_step"] == 4 and "val/bpb" in last and "train/loss" in last
    # Step lines carry training metrics only: no stale validation copy between validations.
    steps = [json.loads(ln.split(" ", 1)[1]) for ln in lines[:-1]]
    assert any("train/loss" in m for m in steps) and not any("val/bpb" in m for m in steps[1:])


def test_eval_entry_point_reports_bpb_and_exact_match(tmp_path):
    from moe_swarm.cli.eval import evaluate
    from moe_swarm.data.tasks import get_task, greedy_exact_match
    from moe_swarm.data.tokenizer import ByteTokenizer

    s = train(
        compose_cfg(
            [
                "experiment=reasoning_mul",
                *TINY,
                "run_id=ev",
                "trainer.max_steps=2",
                "trainer.val_check_interval=2",
                "trainer.limit_val_batches=1",
            ],
            tmp_path,
        )
    )
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                f"checkpoint={s['checkpoint']}",
                "split=test",
                "max_batches=2",
                "em_problems=16",
                f"out={tmp_path / 'ev.json'}",
            ],
        )
    report = evaluate(cfg)
    assert report["test/bpb"] == pytest.approx(report["test/loss"] / math.log(2))
    assert json.loads((tmp_path / "ev.json").read_text())["em_problems"] == 16
    model, hp = load_model(s["checkpoint"])
    task = get_task(hp["eval_task"]["name"], **hp["eval_task"]["kwargs"])
    problems = task.generate("test", 16, seed=hp["run_config"]["seed"])
    expected = greedy_exact_match(model, problems, task, ByteTokenizer(), hp["eval_max_new_tokens"])
    assert report["test/em"] == sum(expected) / 16


def test_eval_reads_checkpoints_whose_run_config_names_the_old_datamodule_path(tmp_path):
    from moe_swarm.cli.eval import evaluate

    s = train(
        compose_cfg(
            ["experiment=quickstart", *TINY, "run_id=old", "trainer.max_steps=2", "data.val_windows=2"],
            tmp_path,
        )
    )
    ckpt = torch.load(s["checkpoint"], weights_only=True)
    data = ckpt["hyper_parameters"]["run_config"]["data"]
    assert data["_target_"] == "moe_swarm.training.datamodules.TextDataModule"
    data["_target_"] = "moe_swarm.data.datamodules.TextDataModule"  # as written before the move
    torch.save(ckpt, s["checkpoint"])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=[f"checkpoint={s['checkpoint']}", f"out={tmp_path / 'e.json'}"])
    assert math.isfinite(evaluate(cfg)["val/bpb"])
