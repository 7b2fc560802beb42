"""Value head training, group-relative advantages, and swarm state save/load."""

import pytest
import torch

from moe_swarm.swarm import (
    SwarmConfig,
    ValueHead,
    fit_value_head,
    group_relative_advantages,
    load_swarm_state,
    save_swarm_state,
    value_loss,
)


def toy_batch(n: int = 64, d: int = 16):
    g = torch.Generator().manual_seed(0)
    thoughts = torch.randn(n, d, generator=g)
    rewards = (thoughts[:, 0] + 0.5 * thoughts[:, 1] > 0).float()
    return thoughts, rewards


def test_one_training_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    head = ValueHead(16, 32)
    thoughts, rewards = toy_batch()
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    before = value_loss(head, thoughts, rewards)
    opt.zero_grad()
    before.backward()
    opt.step()
    after = value_loss(head, thoughts, rewards)
    assert after.item() < before.item()


def test_fit_value_head_learns_a_separable_rule():
    torch.manual_seed(0)
    head = ValueHead(16, 32)
    thoughts, rewards = toy_batch(256)
    losses = fit_value_head(head, thoughts, rewards, steps=150, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]
    accuracy = ((head.probability(thoughts) > 0.5).float() == rewards).float().mean()
    assert accuracy > 0.9
    assert not head.training


def test_value_loss_is_binary_cross_entropy_and_checks_shapes():
    head = ValueHead(16, 8)
    thoughts, rewards = toy_batch(8)
    manual = torch.nn.functional.binary_cross_entropy(torch.sigmoid(head(thoughts)), rewards)
    torch.testing.assert_close(value_loss(head, thoughts, rewards), manual)
    weighted = value_loss(head, thoughts, rewards, pos_weight=3.0)
    assert not torch.allclose(weighted, manual)
    with pytest.raises(ValueError, match="rewards"):
        value_loss(head, thoughts, rewards[:3])
    with pytest.raises(ValueError, match="d_model"):
        head(torch.zeros(2, 5))


def test_group_relative_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    groups = torch.tensor([5, 5, 9, 9, 2, 2, 2, 2])
    adv = group_relative_advantages(rewards, groups, eps=0.0)
    # group 5: mean .5, std .5 -> +1, -1; group 9: all equal -> 0 (0/0 guarded by eps below)
    assert adv[:2].tolist() == [1.0, -1.0]
    # group 2: mean .25, population std sqrt(3)/4
    std = (3**0.5) / 4
    torch.testing.assert_close(adv[4:], torch.tensor([-0.25, -0.25, -0.25, 0.75]) / std)
    adv_eps = group_relative_advantages(rewards, groups)
    assert adv_eps[2:4].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="1-D"):
        group_relative_advantages(rewards, groups[:3])


def test_save_load_round_trips_to_a_file(tmp_path):
    torch.manual_seed(1)
    head = ValueHead(16, 8)
    cfg = SwarmConfig(
        num_agents=5, rounds=3, temperature=[0.5, 1.0], top_k_override=[None, 3], early_exit_share=2.0
    )
    path = tmp_path / "nested" / "swarm.pt"
    save_swarm_state(path, head, cfg)
    assert path.is_file() and not path.with_name("swarm.pt.tmp").exists()
    loaded_head, loaded_cfg = load_swarm_state(path)
    assert loaded_cfg == cfg
    x = torch.randn(4, 16)
    torch.testing.assert_close(loaded_head(x), head(x))
    assert not loaded_head.training


def test_save_load_inside_a_checkpoint_dict(tmp_path):
    head = ValueHead(16, 8)
    cfg = SwarmConfig(score="both")
    ckpt = {"state_dict": {"model.w": torch.ones(2)}, "epoch": 3}
    save_swarm_state(ckpt, head, cfg)
    assert "swarm_state" in ckpt and ckpt["epoch"] == 3
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    h2, c2 = load_swarm_state(path)  # finds ckpt["swarm_state"]
    assert c2 == cfg
    torch.testing.assert_close(h2(torch.ones(1, 16)), head(torch.ones(1, 16)))
    h3, c3 = load_swarm_state(torch.load(path, weights_only=True))
    assert c3 == cfg and h3 is not None
    custom = {}
    save_swarm_state(custom, None, cfg, key="swarm_v2")
    h4, c4 = load_swarm_state(custom, key="swarm_v2")
    assert h4 is None and c4 == cfg


def test_load_errors_say_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_swarm_state(tmp_path / "nope.pt")
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="no swarm state"):
        load_swarm_state(path)
    bad = {"swarm_state": {"format": "moe_swarm.swarm_state", "version": 99, "cfg": {}}}
    with pytest.raises(ValueError, match="version"):
        load_swarm_state(bad)
