"""moe_swarm.scale.cluster: node-rank rules, ClusterSpec validation, the environment Lightning reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from moe_swarm.scale.cluster import (
    APPLIED_MARKER,
    STRAY_RANK_VARS,
    ClusterConfigError,
    ClusterSpec,
    apply_to_environ,
    check_matches_trainer,
    check_world_size,
    clean_env,
    resolve_node_rank,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "cluster"


def _cluster_cfg(name: str, trainer_nodes: int = 1, trainer_devices: int = 1):
    trainer = OmegaConf.create({"trainer": {"num_nodes": trainer_nodes, "devices": trainer_devices}})
    cfg = OmegaConf.merge(trainer, {"cluster": OmegaConf.load(CONF / f"{name}.yaml")})
    return cfg.cluster


# --- resolve_node_rank -------------------------------------------------------------------------


def test_node_rank_env_wins_over_index_and_hostname():
    env = {"NODE_RANK": "1", "JOB_COMPLETION_INDEX": "2"}
    assert resolve_node_rank(env, "trainer-3", num_nodes=4) == 1


def test_completion_index_used_when_node_rank_unset_or_blank():
    assert resolve_node_rank({"JOB_COMPLETION_INDEX": "2"}, "trainer-3", num_nodes=4) == 2
    assert resolve_node_rank({"NODE_RANK": " ", "JOB_COMPLETION_INDEX": "2"}, "x", num_nodes=4) == 2


@pytest.mark.parametrize(
    ("hostname", "rank"),
    [("trainer-3", 3), ("moe-swarm-train-0", 0), ("trainer-12.trainer.default.svc", 12)],
)
def test_hostname_suffix_used_on_several_nodes(hostname, rank):
    assert resolve_node_rank({}, hostname, num_nodes=16) == rank


def test_single_node_ignores_hostname():
    # A laptop called ws-3 is not node 3 of anything.
    assert resolve_node_rank({}, "ws-3", num_nodes=1) == 0
    assert resolve_node_rank({}, "mypod-abc", num_nodes=1) == 0


def test_hostname_without_index_is_an_error_on_several_nodes():
    with pytest.raises(ClusterConfigError) as err:
        resolve_node_rank({}, "mypod-abc", num_nodes=2)
    message = str(err.value)
    assert "'mypod-abc'" in message
    assert "NODE_RANK=0..1" in message
    assert "Indexed Job" in message


@pytest.mark.parametrize(("value", "fragment"), [("abc", "is not an integer"), ("-1", "must be >= 0")])
def test_bad_node_rank_value_names_the_variable(value, fragment):
    with pytest.raises(ClusterConfigError, match=rf"NODE_RANK.*{fragment}"):
        resolve_node_rank({"NODE_RANK": value}, "trainer-0", num_nodes=2)


def test_cluster_config_error_is_a_value_error():
    assert issubclass(ClusterConfigError, ValueError)


# --- ClusterSpec validation ----------------------------------------------------------------------


def test_valid_spec_and_world_size():
    spec = ClusterSpec(num_nodes=2, devices=4, node_rank=1, master_addr="job-0.job", master_port=29500)
    assert spec.world_size == 8


def test_rank_outside_node_count_names_both_values():
    with pytest.raises(ClusterConfigError) as err:
        ClusterSpec(num_nodes=2, devices=1, node_rank=2, master_port=29500)
    message = str(err.value)
    assert "node_rank=2" in message and "0..1" in message and "num_nodes=2" in message


def test_several_nodes_need_a_master_port():
    with pytest.raises(ClusterConfigError, match=r"master_port is unset but num_nodes=2.*MASTER_PORT"):
        ClusterSpec(num_nodes=2, devices=1, node_rank=0)


def test_single_node_may_leave_port_to_lightning():
    assert ClusterSpec(num_nodes=1, devices=2, node_rank=0).master_port is None


@pytest.mark.parametrize("port", [0, 65536, 70000])
def test_port_must_be_a_tcp_port(port):
    with pytest.raises(ClusterConfigError, match="master_port"):
        ClusterSpec(num_nodes=1, devices=1, node_rank=0, master_port=port)


@pytest.mark.parametrize(
    ("field", "value"), [("num_nodes", 0), ("devices", 0), ("num_nodes", "2"), ("devices", True)]
)
def test_counts_must_be_positive_ints(field, value):
    kwargs = {"num_nodes": 1, "devices": 1, "node_rank": 0, field: value}
    with pytest.raises(ClusterConfigError, match=field):
        ClusterSpec(**kwargs)


def test_empty_master_addr_is_rejected():
    with pytest.raises(ClusterConfigError, match="master_addr.*MASTER_ADDR"):
        ClusterSpec(num_nodes=1, devices=1, node_rank=0, master_addr=" ")


# --- from_env --------------------------------------------------------------------------------------


def test_from_env_reads_the_rendezvous_variables():
    env = {
        "NUM_NODES": "3",
        "DEVICES": "2",
        "MASTER_ADDR": "moe-0.moe",
        "MASTER_PORT": "29500",
        "JOB_COMPLETION_INDEX": "2",
    }
    spec = ClusterSpec.from_env(env, "ignored-7")
    assert spec == ClusterSpec(
        num_nodes=3, devices=2, node_rank=2, master_addr="moe-0.moe", master_port=29500
    )


def test_from_env_defaults_to_one_local_process():
    spec = ClusterSpec.from_env({}, "laptop")
    assert (spec.num_nodes, spec.devices, spec.node_rank) == (1, 1, 0)
    assert (spec.master_addr, spec.master_port) == ("127.0.0.1", None)


def test_from_env_arguments_win_over_environment():
    env = {"NUM_NODES": "8", "DEVICES": "8", "MASTER_PORT": "29500"}
    spec = ClusterSpec.from_env(env, "trainer-1", num_nodes=2, devices=1)
    assert (spec.num_nodes, spec.devices, spec.node_rank) == (2, 1, 1)


def test_from_env_several_nodes_without_port_fails():
    with pytest.raises(ClusterConfigError, match="master_port is unset"):
        ClusterSpec.from_env({"NUM_NODES": "2"}, "trainer-0")


def test_from_env_service_link_port_gets_a_hint():
    env = {"NUM_NODES": "2", "MASTER_PORT": "tcp://10.0.0.7:29500"}
    with pytest.raises(ClusterConfigError, match=r"MASTER_PORT='tcp://.*enableServiceLinks"):
        ClusterSpec.from_env(env, "trainer-0")


def test_from_env_extra_node_fails_fast():
    # The NOTES.md failure: num_nodes=1 on a second pod. Pod 1 must not start training alone.
    with pytest.raises(ClusterConfigError, match="node_rank=1 is outside 0..0"):
        ClusterSpec.from_env({"NUM_NODES": "1", "JOB_COMPLETION_INDEX": "1"}, "trainer-1")


# --- from_config with the shipped conf/cluster YAMLs ---------------------------------------------


def test_local_yaml_mirrors_the_trainer(restore_environ):
    restore_environ.pop("MASTER_PORT", None)
    cfg = _cluster_cfg("local", trainer_nodes=1, trainer_devices=2)
    spec = ClusterSpec.from_config(cfg, {"NODE_RANK": "5"}, "ws-3")
    assert spec == ClusterSpec(num_nodes=1, devices=2, node_rank=0, master_port=None)


def test_env_yaml_reads_the_environment(restore_environ):
    restore_environ.update(
        {"NUM_NODES": "2", "DEVICES": "1", "MASTER_ADDR": "moe-0.moe", "MASTER_PORT": "29500"}
    )
    cfg = _cluster_cfg("env", trainer_nodes=2, trainer_devices=1)
    spec = ClusterSpec.from_config(cfg, {"JOB_COMPLETION_INDEX": "1"}, "pod-x")
    assert spec == ClusterSpec(
        num_nodes=2, devices=1, node_rank=1, master_addr="moe-0.moe", master_port=29500
    )


def test_env_yaml_falls_back_to_trainer_counts(restore_environ):
    for name in ("NUM_NODES", "DEVICES", "MASTER_ADDR", "MASTER_PORT"):
        restore_environ.pop(name, None)
    cfg = _cluster_cfg("env", trainer_nodes=1, trainer_devices=3)
    spec = ClusterSpec.from_config(cfg, {}, "laptop")
    assert (spec.num_nodes, spec.devices, spec.master_addr, spec.master_port) == (1, 3, "127.0.0.1", None)


def test_config_node_rank_overrides_resolution():
    cfg = {"num_nodes": 2, "devices": 1, "master_port": 29500, "node_rank": 1}
    assert ClusterSpec.from_config(cfg, {"NODE_RANK": "0"}, "trainer-0").node_rank == 1


def test_config_unknown_key_is_named():
    with pytest.raises(ClusterConfigError, match=r"unknown cluster config key\(s\) \['num_node'\]"):
        ClusterSpec.from_config({"num_node": 2}, {}, "h")


@pytest.mark.parametrize("devices", [-1, "-1", "auto"])
def test_single_node_may_leave_devices_to_lightning(devices):
    # trainer=ddp uses devices=-1 (every GPU); with cluster=local that reaches ClusterSpec as is.
    spec = ClusterSpec.from_config({"num_nodes": 1, "devices": devices}, {}, "h")
    assert spec.devices is None and spec.world_size is None
    check_matches_trainer(spec, 1, devices)


def test_local_yaml_accepts_the_ddp_trainer(restore_environ):
    restore_environ.pop("MASTER_PORT", None)
    spec = ClusterSpec.from_config(_cluster_cfg("local", trainer_devices=-1), {}, "gpu-box")
    assert spec.devices is None


def test_several_nodes_must_state_devices():
    cfg = {"num_nodes": 2, "devices": "auto", "master_port": 29500}
    with pytest.raises(
        ClusterConfigError, match=r"cluster.devices='auto' with num_nodes=2.*trainer.devices=N"
    ):
        ClusterSpec.from_config(cfg, {"NODE_RANK": "0"}, "h")
    with pytest.raises(ClusterConfigError, match=r"devices=None.*needs num_nodes=1"):
        ClusterSpec(num_nodes=2, devices=None, node_rank=0, master_port=29500)


@pytest.mark.parametrize(("devices", "count"), [([0, 1], 2), ("0,1,2", 3), ("4", 4)])
def test_device_ids_count_as_devices(devices, count):
    assert ClusterSpec.from_config({"num_nodes": 1, "devices": devices}, {}, "h").devices == count


def test_config_bad_devices_names_the_key():
    with pytest.raises(ClusterConfigError, match=r"cluster.devices='gpu' is not an integer"):
        ClusterSpec.from_config({"num_nodes": 1, "devices": "gpu"}, {}, "h")


def test_config_clean_flag_accepts_text():
    spec = ClusterSpec.from_config({"num_nodes": 1, "devices": 1, "clean_stray_env": "false"}, {}, "h")
    assert spec.clean_stray_env is False


# --- clean_env / apply_to_environ ----------------------------------------------------------------


def test_clean_env_removes_only_stray_rank_variables():
    env = {name: "1" for name in STRAY_RANK_VARS} | {"PATH": "/bin", "NODE_RANK": "1", "MASTER_PORT": "1"}
    assert clean_env(env) == {"PATH": "/bin", "NODE_RANK": "1", "MASTER_PORT": "1"}
    assert "LOCAL_RANK" in env  # the input is not modified


def test_apply_sets_lightning_variables_and_clears_strays():
    environ = {name: "3" for name in STRAY_RANK_VARS} | {"HOME": "/root"}
    spec = ClusterSpec(num_nodes=2, devices=1, node_rank=1, master_addr="moe-0.moe", master_port=29500)
    apply_to_environ(spec, environ)
    assert environ == {
        "HOME": "/root",
        "MASTER_ADDR": "moe-0.moe",
        "MASTER_PORT": "29500",
        "NODE_RANK": "1",
        APPLIED_MARKER: "1",
    }


def test_apply_without_port_removes_a_stale_one():
    environ = {"MASTER_PORT": "1234"}
    apply_to_environ(ClusterSpec(num_nodes=1, devices=2, node_rank=0), environ)
    assert "MASTER_PORT" not in environ


def test_apply_can_keep_strays_when_asked():
    environ = {"LOCAL_RANK": "0"}
    apply_to_environ(ClusterSpec(num_nodes=1, devices=1, node_rank=0, clean_stray_env=False), environ)
    assert environ["LOCAL_RANK"] == "0"


def test_apply_leaves_lightning_children_alone():
    # Lightning re-runs the command for device 1 with LOCAL_RANK/MASTER_PORT set; the child inherits
    # the marker and must keep them, or it would start its own processes on another port.
    child = {
        APPLIED_MARKER: "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "2",
        "MASTER_PORT": "41234",
        "NODE_RANK": "0",
    }
    before = dict(child)
    apply_to_environ(ClusterSpec(num_nodes=1, devices=2, node_rank=0), child)
    assert child == before


def test_lightning_sees_the_applied_cluster(restore_environ):
    from lightning.fabric.plugins.environments import (
        LightningEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    restore_environ.pop(APPLIED_MARKER, None)
    restore_environ.update(
        {"TORCHELASTIC_RUN_ID": "x", "LOCAL_RANK": "0", "SLURM_NTASKS": "4", "GROUP_RANK": "3"}
    )
    assert TorchElasticEnvironment.detect() and SLURMEnvironment.detect()  # what stray vars do

    spec = ClusterSpec(num_nodes=2, devices=1, node_rank=1, master_addr="moe-0.moe", master_port=29511)
    apply_to_environ(spec)

    assert not TorchElasticEnvironment.detect()
    assert not SLURMEnvironment.detect()
    lightning_env = LightningEnvironment()
    assert lightning_env.creates_processes_externally is False
    assert lightning_env.node_rank() == 1
    assert (lightning_env.main_address, lightning_env.main_port) == ("moe-0.moe", 29511)


# --- checks after start-up ---------------------------------------------------------------------------


def test_world_size_check():
    check_world_size(4, 4)
    with pytest.raises(ClusterConfigError, match=r"expects 4 processes.*has 2"):
        check_world_size(4, 2)


def test_trainer_agreement_check():
    spec = ClusterSpec(num_nodes=2, devices=1, node_rank=0, master_port=29500)
    check_matches_trainer(spec, 2, 1)
    check_matches_trainer(spec, "2", [3])  # one device id is one device
    with pytest.raises(ClusterConfigError, match=r"cluster.devices=auto but trainer.devices=2"):
        check_matches_trainer(ClusterSpec(num_nodes=1, devices=None, node_rank=0), 1, 2)
    with pytest.raises(ClusterConfigError) as err:
        check_matches_trainer(spec, 1, 2)
    message = str(err.value)
    assert "cluster.num_nodes=2 but trainer.num_nodes=1" in message
    assert "cluster.devices=1 but trainer.devices=2" in message
