"""Remote training requests cannot become code execution or reads outside the allowed roots."""

import os

import pytest

from moe_swarm.control.errors import ControlError, InvalidArgument, NotFound, PermissionDenied
from moe_swarm.control.validation import (
    OverridePolicy,
    check_id,
    resolve_checkpoint_path,
    resolve_config_path,
    validate_overrides,
)

INVALID = InvalidArgument
DENIED = PermissionDenied
NOT_FOUND = NotFound


@pytest.fixture
def policy(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    return OverridePolicy(
        addable_keys=("trainer.limit_train_batches", "callbacks.extra.*"),
        path_keys=("data.paths", "data.bin_path"),
        data_roots=(str(data),),
        max_overrides=8,
    )


ACCEPTED = [
    "trainer.max_steps=5",
    "model.d_model=32",
    "model=moe_small",
    "debug=limit",
    "module.optimizer.lr=0.001",
    "data.batch_size=4",
    "trainer.precision=bf16-mixed",
    "seed=7",
    "+trainer.limit_train_batches=3",
    "++callbacks.extra.every=2",
    "trainer={max_steps: 3, val_check_interval: 3}",
    "model.top_k_list=[1,2]",
    "logger=tensorboard",
    "module.name='a b'",
]

REJECTED = [
    ("callbacks.x._target_=os.system", INVALID, "_target_"),
    ("_target_=builtins.eval", INVALID, "_target_"),
    ("model._partial_=true", INVALID, "_partial_"),
    ("trainer={_target_: os.system, command: id}", INVALID, "_target_"),
    ("data=[{_target_: subprocess.run}]", INVALID, "_target_"),
    ("hydra.run.dir=/tmp/x", INVALID, "hydra"),
    ("hydra/launcher=joblib", INVALID, "hydra"),
    ("+hydra.searchpath=[file:///etc]", INVALID, "hydra"),
    ("model@hydra=moe_small", INVALID, "package"),
    ("+brand_new_key=1", INVALID, "allowlist"),
    ("++trainer.plugins=x", INVALID, "allowlist"),
    ("~trainer.max_steps", INVALID, "deleting"),
    ("trainer.max_steps=1,2,3", INVALID, "sweep"),
    ("trainer.max_steps=choice(1,2)", INVALID, "sweep"),
    ("model.name=${oc.env:MOE_SWARM_TOKENS}", INVALID, "interpolation"),
    ("model.name='${oc.env:HOME}'", INVALID, "interpolation"),
    ("run_id=other", INVALID, "run_id field"),
    ("run_dir=/tmp/elsewhere", INVALID, "run directory"),
    ("paths.runs_dir=/tmp/x", INVALID, "paths"),
    ("experiment=quickstart", INVALID, "config_path"),
    ("data.paths=[/etc/passwd]", DENIED, "outside the allowed data roots"),
    ("data.bin_path=/etc/shadow", DENIED, "outside"),
    ("data.paths=[relative/file.txt]", INVALID, "absolute"),
    ("model=../../../etc/passwd", INVALID, "path values are only accepted"),
    ("callbacks.model_checkpoint.dirpath=/tmp/evil", INVALID, "path values are only accepted"),
    ("trainer.default_root_dir='~/x'", INVALID, "path values"),
    ("trainer.default_root_dir=~/x", INVALID, "not valid Hydra syntax"),
    ("model.d_model", INVALID, "not valid Hydra syntax"),
    ("=5", INVALID, "not a dotted name"),
    ("", INVALID, "empty"),
    ("a..b=1", INVALID, "not valid Hydra syntax"),
    ("x=" + "9" * 600, INVALID, "limit"),
    ("model.name=a\nb", INVALID, "control character"),
]


@pytest.mark.parametrize("override", ACCEPTED)
def test_accepted_overrides(override, policy):
    assert validate_overrides([override], policy) == [override.strip()]


@pytest.mark.parametrize(("override", "code", "hint"), REJECTED)
def test_rejected_overrides(override, code, hint, policy):
    with pytest.raises(ControlError) as info:
        validate_overrides([override], policy)
    assert type(info.value) is code, info.value.message
    assert hint.lower() in info.value.message.lower(), info.value.message


def test_path_values_inside_the_data_roots_are_accepted(policy, tmp_path):
    inside = tmp_path / "data" / "corpus.txt"
    assert validate_overrides([f"data.paths=[{inside}]", f"data.bin_path={inside}"], policy)
    assert validate_overrides([f"data.paths=['{tmp_path / 'data'}/*.md']"], policy)


def test_symlink_out_of_a_data_root_is_denied(policy, tmp_path):
    link = tmp_path / "data" / "escape"
    os.symlink("/etc", link)
    with pytest.raises(ControlError) as info:
        validate_overrides([f"data.bin_path={link}/passwd"], policy)
    assert type(info.value) is DENIED


def test_too_many_overrides(policy):
    with pytest.raises(ControlError) as info:
        validate_overrides([f"seed={i}" for i in range(9)], policy)
    assert type(info.value) is INVALID and "limit is 8" in info.value.message


# ----------------------------------------------------------------------------- config_path
@pytest.fixture
def confs(tmp_path):
    exp = tmp_path / "conf" / "experiment"
    exp.mkdir(parents=True)
    (exp / "quickstart.yaml").write_text("# @package _global_\ntrainer:\n  max_steps: 3\n")
    root = tmp_path / "user_configs"
    (root / "sub").mkdir(parents=True)
    (root / "mine.yaml").write_text("trainer:\n  max_steps: 4\n")
    (root / "sub" / "deep.yml").write_text("defaults:\n  - override /model: moe_small\nseed: 3\n")
    (root / "evil.yaml").write_text("callbacks:\n  x:\n    _target_: os.system\n")
    (root / "hydra.yaml").write_text("hydra:\n  run:\n    dir: /tmp\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "interp.yaml").write_text("model:\n  name: ${oc.env:SECRET}\n")
    (root / "defaults_escape.yaml").write_text("defaults:\n  - /../../etc/x\n")
    outside = tmp_path / "outside.yaml"
    outside.write_text("seed: 1\n")
    os.symlink(outside, root / "link.yaml")
    return {"exp": exp, "root": root, "outside": outside}


def _resolve(value, confs, roots=True, default="quickstart"):
    return resolve_config_path(value, experiment_dir=confs["exp"], config_roots=[confs["root"]] if roots else [],
                               default_experiment=default)  # fmt: skip


def test_experiment_names_and_default(confs):
    r = _resolve("quickstart", confs)
    assert (r.kind, r.name) == ("experiment", "quickstart")
    assert _resolve("", confs).name == "quickstart"


def test_yaml_files_under_a_root(confs):
    r = _resolve("mine.yaml", confs)
    assert r.kind == "file" and r.path == (confs["root"] / "mine.yaml").resolve() and "max_steps: 4" in r.text
    assert _resolve(str(confs["root"] / "sub" / "deep.yml"), confs).name == "deep"
    assert _resolve("sub/deep.yml", confs).kind == "file"


CONFIG_REJECTED = [
    ("nope", NOT_FOUND, "available: quickstart"),
    ("../conf/experiment/quickstart.yaml", INVALID, "traversal"),
    ("sub/../../outside.yaml", INVALID, "traversal"),
    ("/etc/passwd.yaml", DENIED, "outside the allowed config roots"),
    ("link.yaml", DENIED, "outside"),
    ("missing.yaml", NOT_FOUND, "does not exist"),
    ("/etc/passwd", INVALID, ".yaml"),
    ("evil.yaml", INVALID, "_target_"),
    ("hydra.yaml", INVALID, "hydra"),
    ("list.yaml", INVALID, "mapping"),
    ("interp.yaml", INVALID, "interpolation"),
    ("defaults_escape.yaml", INVALID, "defaults entry"),
    ("bad name!", INVALID, "not an experiment name"),
    ("quick\x00start", INVALID, "NUL"),
]


@pytest.mark.parametrize(("value", "code", "hint"), CONFIG_REJECTED)
def test_rejected_config_paths(value, code, hint, confs):
    with pytest.raises(ControlError) as info:
        _resolve(value, confs)
    assert type(info.value) is code, info.value.message
    assert hint.lower() in info.value.message.lower(), info.value.message


def test_config_files_need_a_configured_root(confs):
    with pytest.raises(ControlError) as info:
        _resolve("mine.yaml", confs, roots=False)
    assert type(info.value) is DENIED and "config_roots is empty" in info.value.message


def test_empty_config_path_without_default(confs):
    with pytest.raises(ControlError) as info:
        _resolve("", confs, default=None)
    assert type(info.value) is INVALID and "quickstart" in info.value.message


# ----------------------------------------------------------------------------- ids and checkpoints
@pytest.mark.parametrize("value", ["run-1", "a.b_c-9", "train-20261127-043000-abcdef", "x" * 64])
def test_valid_ids(value):
    assert check_id(value, "run_id") == value


@pytest.mark.parametrize("value", ["../x", "a/b", "..", ".hidden", "x" * 65, "a b", "a..b", "-x", "é"])
def test_invalid_ids(value):
    with pytest.raises(ControlError) as info:
        check_id(value, "run_id")
    assert type(info.value) is INVALID and "run_id" in info.value.message


def test_checkpoint_paths(tmp_path):
    root = tmp_path / "runs"
    (root / "r1" / "checkpoints").mkdir(parents=True)
    ckpt = root / "r1" / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"x")
    assert resolve_checkpoint_path(str(ckpt), [root]) == ckpt.resolve()
    assert resolve_checkpoint_path("r1/checkpoints/last.ckpt", [root]) == ckpt.resolve()
    cases = [
        ("r1/../../etc/x.ckpt", INVALID),
        ("/etc/passwd", INVALID),
        ("/etc/x.ckpt", DENIED),
        ("r1/checkpoints/none.ckpt", NOT_FOUND),
    ]
    for value, code in cases:
        with pytest.raises(ControlError) as info:
            resolve_checkpoint_path(value, [root])
        assert type(info.value) is code, (value, info.value.message)


def test_served_task_comes_from_the_checkpoint_task_spec_and_checks_prompts():
    from moe_swarm.control.models import _task_of
    from moe_swarm.store.checkpoint import task_spec

    spec = task_spec({"eval_task": {"name": "mul", "kwargs": {"digits_a": 2, "digits_b": 1}}})
    name, task, canonical = _task_of(spec)
    assert name == "mul" and task.params()["digits_a"] == 2 and task.params()["digits_b"] == 1
    assert canonical(" 042 ") == canonical("042")
    task.check_prompt("21*3=")  # 12*3, digits reversed
    with pytest.raises(ValueError, match="expected a 2-digit times a 1-digit number"):
        task.check_prompt("123*45=")
    assert _task_of(task_spec({}))[:2] == ("", None)
