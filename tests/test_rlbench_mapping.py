import numpy as np

from envs.rlbench_backend import from_rlbench_observation, to_rlbench_action


def test_action_becomes_absolute_pose_with_discrete_gripper():
    pose = np.array([0.3, -0.1, 0.9, 0, 1, 0, 0])
    down = np.array([0.0, 1.0, 0.0, 0.0])
    out = to_rlbench_action(np.array([1.0, -0.5, 2.0, 0.7]), pose, 0.02, down)
    assert out.shape == (8,)
    np.testing.assert_allclose(out[:3], [0.32, -0.11, 0.92])
    np.testing.assert_allclose(out[3:7], down)
    assert out[7] == 0.0  # close
    assert to_rlbench_action(np.zeros(4), pose, 0.02, down)[7] == 1.0  # open


def test_observation_is_converted_to_embedded_layout():
    rgb = np.full((8, 8, 3), 0.5, dtype=np.float32)
    obs = from_rlbench_observation(rgb, np.arange(7.0), 1.0, np.ones((2, 3)))
    assert obs["rgb"].dtype == np.uint8 and obs["rgb"][0, 0, 0] == 128
    np.testing.assert_allclose(obs["ee_pos"], [0, 1, 2])
    assert obs["gripper"][0] > 0 and obs["cube_pos"].shape == (2, 3)
