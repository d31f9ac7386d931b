import numpy as np
import pytest
import torch

from envs.dataset import FramePairDataset
from inverse_dynamics.model import (IDMCheckpointError, IDMConfig, InverseDynamicsModel, action_spec,
                                    split_actions)
from inverse_dynamics.train import TrainIDMConfig, augment, run_train_idm


def _model(task="return_cubes", **kw):
    continuous, classes = action_spec(task)
    return InverseDynamicsModel(IDMConfig(task=task, continuous_dim=continuous, discrete_classes=classes,
                                          width=8, **kw))


def test_shapes_dtypes_and_env_actions():
    model = _model(action_mean=[0.1, 0.0, -0.2], action_std=[0.5, 0.5, 0.5])
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    pair = model.to_input(frames, frames)
    assert pair.shape == (3, 6, 64, 64) and pair.dtype == torch.float32 and pair[:, :3].abs().max() <= 1
    assert pair[:, 3:].abs().max() == 0  # identical frames: no change
    continuous, logits = model(pair)
    assert continuous.shape == (3, 3) and logits.shape == (3, 2)
    actions = model.predict(frames, frames)
    assert len(actions) == 3 and actions[0].shape == (4,) and actions[0][3] in (-1.0, 1.0)
    retrace_model = _model("retrace")
    moves = retrace_model.predict(frames, frames)
    assert all(isinstance(a, int) and 0 <= a < 5 for a in moves)


def test_normaliser_round_trip_and_checkpoint(tmp_path):
    model = _model(action_mean=[0.1, -0.3, 0.2], action_std=[0.5, 0.25, 2.0])
    x = torch.randn(5, 3)
    assert torch.allclose(model.denormalise(model.normalise(x)), x, atol=1e-6)
    model.save_pretrained(tmp_path)
    loaded = InverseDynamicsModel.from_pretrained(tmp_path)
    assert loaded.config.action_std == [0.5, 0.25, 2.0]
    assert torch.allclose(loaded.action_mean, torch.tensor([0.1, -0.3, 0.2]))
    frames = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    a, b = model(model.to_input(frames, frames)), loaded(loaded.to_input(frames, frames))
    assert torch.allclose(a[0], b[0], atol=0.02) and torch.allclose(a[1], b[1], atol=0.02)


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(IDMCheckpointError, match="slowfast train-idm"):
        InverseDynamicsModel.from_pretrained(tmp_path)
    _model().save_pretrained(tmp_path)
    (tmp_path / "idm.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(IDMCheckpointError, match="unreadable"):
        InverseDynamicsModel.from_pretrained(tmp_path)


def test_tiny_model_overfits_a_few_samples():
    torch.manual_seed(0)
    model = _model("retrace")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    pair = model.to_input(a, b)
    for _ in range(150):
        _, logits = model(pair)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    assert (model(pair)[1].argmax(-1) == labels).all()


def test_augment_changes_pixels_but_keeps_range():
    pair = torch.rand(4, 6, 64, 64) * 2 - 1
    out = augment(pair, 1.0, torch.Generator().manual_seed(0))
    assert out.shape == pair.shape and out[:, :3].abs().max() <= 1 and not torch.equal(out, pair)
    assert (out[:, :3] + out[:, 3:]).abs().max() <= 1 + 1e-6
    assert torch.equal(augment(pair, 0.0, torch.Generator().manual_seed(0)), pair)


def test_train_idm_job_on_real_episodes(cubes_dataset, tmp_path):
    root, _ = cubes_dataset
    pairs = FramePairDataset(root)
    sample = pairs[0]
    assert sample["frame"].shape == (64, 64, 3) and sample["action"].shape == (4,)
    continuous, classes = split_actions("return_cubes", np.array([[0.5, -1, 0, 1], [0, 0, 0, -1]]))
    assert classes.tolist() == [1, 0] and continuous.shape == (2, 3)
    cfg = TrainIDMConfig(task="return_cubes", data=str(root), out=str(tmp_path), max_steps=4, batch_size=8,
                         save_every=2, val_episodes=1, progress=False)
    assert run_train_idm(cfg) == 0
    model = InverseDynamicsModel.from_pretrained(tmp_path)
    assert model.config.continuous_dim == 3 and model.config.continuous_target == "next_position"
    assert model.config.max_step == 0.03 and 0.0 < model.config.action_mean[2] < 0.4  # a height in metres
    assert torch.equal(sample["next_ee_pos"], torch.from_numpy(pairs.data.load_episode(0)["obs_ee_pos"][1]))
    with pytest.raises(ValueError, match="--resume"):
        run_train_idm(cfg)
    assert run_train_idm(TrainIDMConfig(**{**cfg.__dict__, "max_steps": 6, "resume": True})) == 0


def test_predicted_positions_become_deltas_against_the_measured_arm():
    import envs

    model = _model(continuous_target="next_position", max_step=0.03)
    env = envs.make("return_cubes")
    obs, _ = env.reset(seed=3)
    goal = obs["ee_pos"] + np.array([0.06, -0.04, -0.05], dtype=np.float32)
    first = model.to_env_action(np.array([*goal, -1.0], dtype=np.float32), obs)
    assert np.allclose(first[:3], [1.0, -1.0, -1.0]) and first[3] == -1.0  # clipped to one frame's reach
    for _ in range(12):
        obs, *_ = env.step(model.to_env_action(np.array([*goal, -1.0], dtype=np.float32), obs))
    assert np.linalg.norm(obs["ee_pos"] - goal) < 0.005
    assert _model().to_env_action(first, obs) is first  # delta models act as predicted
    env.close()
    with pytest.raises(IDMCheckpointError, match="continuous_target"):
        IDMConfig(task="return_cubes", continuous_target="velocity")
