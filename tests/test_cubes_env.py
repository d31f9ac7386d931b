import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
import tasks
from envs.cubes import CubesEnv
from tasks import return_cubes


def test_passes_gymnasium_env_checker():
    env = CubesEnv()
    check_env(env, skip_render_check=False)
    env.close()


def test_same_seed_gives_same_episode_and_other_seed_differs():
    def rollout(seed):
        env = CubesEnv()
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        frames = [obs["rgb"]]
        for _ in range(12):
            obs, *_ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
            frames.append(obs["rgb"])
        env.close()
        return np.stack(frames), obs["cube_pos"]

    frames_a, cubes_a = rollout(3)
    frames_b, cubes_b = rollout(3)
    frames_c, _ = rollout(4)
    assert np.array_equal(frames_a, frames_b)
    assert np.array_equal(cubes_a, cubes_b)
    assert not np.array_equal(frames_a[0], frames_c[0])


def test_cubes_and_gripper_are_visible_at_default_size():
    env = CubesEnv(num_cubes=3)
    obs, _ = env.reset(seed=1)
    rgb = obs["rgb"].astype(int)
    for colour, (r, g, b) in return_cubes.CUBE_COLOURS.items():
        target = np.array([r, g, b]) * 255
        mask = (np.abs(rgb - target).max(-1) < 70)
        cols = np.flatnonzero(mask.any(0))
        assert len(cols) >= 4, f"{colour} cube is {len(cols)} px wide"
    grey = (np.abs(rgb[..., 0] - rgb[..., 1]) < 12) & (rgb[..., 0] > 150)
    assert grey.sum() > 20, "the white/grey gripper should be in view"
    env.close()


def test_action_moves_end_effector_and_clips_to_workspace():
    env = CubesEnv()
    obs, _ = env.reset(seed=0)
    start = obs["ee_pos"].copy()
    for _ in range(3):
        obs, *_ = env.step(np.array([0.0, 1.0, 0.0, -1.0], dtype=np.float32))
    assert obs["ee_pos"][1] - start[1] == pytest.approx(3 * env.config.max_step, abs=0.01)
    with pytest.raises(ValueError):
        env.step(np.array([np.nan, 0, 0, 0]))
    env.close()


def test_expert_returns_cubes_precisely():
    env = CubesEnv()
    expert = envs.expert_for(env)
    env.reset(seed=11)
    subgoals = env.subgoals()
    assert [s.kind for s in subgoals] == ["move", "move", "return", "return"]
    for subgoal in subgoals[:2]:
        for action in expert.actions(subgoal):
            env.step(action)
    moved = env.metric()
    assert moved["distance"] > 0.1 and not moved["success"] and moved["moved_away"]
    for subgoal in subgoals[2:]:
        for action in expert.actions(subgoal):
            env.step(action)
    done = env.metric()
    assert done["success"] and done["distance"] < 0.005
    assert min(done["max_displacement"].values()) > return_cubes.MOVED_AWAY_RADIUS
    env.close()


def test_untouched_cubes_are_not_a_success():
    """Cubes that never left their places sit at distance 0, but the task was not done."""
    env = CubesEnv()
    env.reset(seed=11)
    for _ in range(20):
        env.step(np.array([0.0, 0.0, 0.3, 0.0]))
    m = env.metric()
    assert m["distance"] < return_cubes.SUCCESS_RADIUS
    assert not m["moved_away"] and not m["success"]
    assert max(m["max_displacement"].values()) < return_cubes.MOVED_AWAY_RADIUS
    env.close()


def test_task_registry_and_metric():
    task = tasks.get("return_cubes")
    assert task is return_cubes
    with pytest.raises(tasks.UnknownTaskError, match="return_cubes"):
        tasks.get("stack_cubes")
    m = return_cubes.metric(np.zeros((2, 3)), np.array([[0.03, 0, 0], [0.0, 0.01, 0]]), ("red", "blue"))
    assert m["distance"] == pytest.approx(0.02)
    assert m["per_cube"] == {"red": pytest.approx(0.03), "blue": pytest.approx(0.01)}
    assert not m["success"] and "moved_away" not in m
    near = np.array([[0.005, 0, 0], [0.0, 0.01, 0]])
    assert return_cubes.metric(np.zeros((2, 3)), near, ("red", "blue"), np.array([0.15, 0.2]))["success"]
    stayed = return_cubes.metric(np.zeros((2, 3)), near, ("red", "blue"), np.array([0.15, 0.05]))
    assert not stayed["success"] and not stayed["moved_away"]
    layout = return_cubes.sample_layout(np.random.default_rng(0), 3)
    assert len(set(layout.places)) == 3
    assert return_cubes.goal_text(("red", "blue")).startswith("move the red and blue cubes aside")
