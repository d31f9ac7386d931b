import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.dataset import ChunkDataset, load_dataset
from envs.minedojo_backend import from_minedojo_observation, to_minedojo_action, to_tile
from envs.retrace_crafter import CrafterRetraceEnv
from envs.retrace_expert import bfs_path
from tasks import retrace
from tasks.base import CHUNK_FRAMES


def test_passes_gymnasium_env_checker():
    check_env(CrafterRetraceEnv())


def test_moves_follow_action_names_and_are_deterministic():
    def rollout(seed):
        env = CrafterRetraceEnv()
        obs, _ = env.reset(seed=seed)
        frames, positions = [obs["rgb"]], [obs["pos"]]
        for action in [1, 1, 3, 2, 4, 0]:
            obs, *_ = env.step(action)
            frames.append(obs["rgb"]); positions.append(obs["pos"])
        return np.stack(frames), np.stack(positions), env

    frames_a, pos_a, env = rollout(2)
    frames_b, pos_b, _ = rollout(2)
    assert np.array_equal(frames_a, frames_b) and np.array_equal(pos_a, pos_b)
    other, _, _ = rollout(3)
    assert not np.array_equal(frames_a[0], other[0])
    # A move onto a walkable tile changes the position by the named direction.
    env.reset(seed=2)
    leg = env.legs[0]
    action = retrace.ACTIONS.index(f"go {leg.direction}")
    before = env.player_pos()
    obs, *_ = env.step(action)
    assert tuple(obs["pos"] - before) == retrace.DIRECTIONS[leg.direction]
    with pytest.raises(ValueError):
        env.step(7)


def test_long_episode_is_safe_and_daylight_constant():
    env = CrafterRetraceEnv()
    env.reset(seed=0)
    first = env.render().copy()
    for _ in range(400):
        env.step(0)
    assert env._game._player.health > 0
    assert np.array_equal(env.render(), first)  # no night, no creatures wandering in


def test_expert_retraces_exactly(retrace_dataset):
    _, summary = retrace_dataset
    assert [e["distance"] for e in summary["episodes"]] == [0.0, 0.0, 0.0]
    data = load_dataset(retrace_dataset[0])
    episode = data.load_episode(0)
    meta = data.episodes[0]
    assert meta["metric"]["success"] and meta["metric"]["final_distance"] == 0.0
    assert meta["metric"]["legs_retraced"] == 1.0
    assert np.array_equal(episode["obs_pos"][0], episode["obs_pos"][-1])
    assert meta["subgoals"][-1]["text"] == retrace.RETRACE_TEXT
    legs = len(meta["subgoals"]) - 1
    assert meta["length"] == 2 * legs * CHUNK_FRAMES
    sample = ChunkDataset(retrace_dataset[0])[legs]
    assert sample["text"] == retrace.RETRACE_TEXT


def test_metric_uses_closest_approach_to_waypoints_and_success_needs_the_walk_out():
    outbound = retrace.path_of(np.array([0, 0]), [retrace.Leg("right", 4), retrace.Leg("down", 2)])
    assert retrace.waypoints(outbound).tolist() == [[0, 0], [2, 0], [4, 0], [4, 2]]
    perfect = retrace.metric(outbound, outbound, outbound[::-1])
    assert perfect["distance"] == 0.0 and perfect["outbound_distance"] == 0.0
    assert perfect["went_out"] and perfect["success"]
    stayed_out = retrace.metric(outbound, outbound, outbound[-1:])
    assert stayed_out["final_distance"] == pytest.approx(np.hypot(4, 2)) and not stayed_out["success"]
    assert stayed_out["distance"] == pytest.approx(np.mean([np.hypot(4, 2), np.hypot(2, 2), 2.0, 0.0]))
    # Never leaving the start ends "back at the start" but did not do the task.
    start = outbound[:1]
    never_left = retrace.metric(outbound, start, start)
    assert never_left["final_distance"] == 0.0 and not never_left["went_out"] and not never_left["success"]
    assert never_left["distance"] == pytest.approx(np.mean([0.0, 2.0, 4.0, np.hypot(4, 2)]))
    assert never_left["outbound_distance"] == never_left["distance"]
    short = retrace.metric(outbound, outbound[:-1], outbound[-2::-1])  # turned back one block early
    assert short["went_out"] and short["success"]
    shorter = retrace.metric(outbound, outbound[:-2], outbound[-3::-1])  # two blocks early
    assert not shorter["went_out"] and not shorter["success"]


def test_legs_retraced_checks_each_return_chunk_against_its_leg_reversed():
    legs = [retrace.Leg("right", 4), retrace.Leg("down", 2), retrace.Leg("left", 3)]
    outbound = retrace.path_of(np.array([0, 0]), legs)
    assert retrace.leg_headings(outbound).tolist() == [[1, 0], [0, 1], [-1, 0]]

    def walk(position, moves):  # one chunk a leg, each padded with stays
        trajectory = [np.asarray(position)]
        for direction, steps in moves:
            step = np.array(retrace.DIRECTIONS[direction]) if direction else np.zeros(2, int)
            for i in range(CHUNK_FRAMES):
                trajectory.append(trajectory[-1] + step * (i < steps))
        return np.stack(trajectory)

    back = walk(outbound[-1], [("right", 3), ("up", 2), ("left", 4)])
    retraced = retrace.metric(outbound, outbound, back)
    assert retraced["retraced_per_leg"] == [True, True, True] and retraced["legs_retraced"] == 1.0
    assert retraced["return_chunk_moves"] == [[3, 0], [0, -2], [-4, 0]]
    wrong_turn = walk(outbound[-1], [("right", 3), ("down", 2), (None, 0)])
    assert retrace.metric(outbound, outbound, wrong_turn)["retraced_per_leg"] == [True, False, False]
    stood = retrace.metric(outbound, outbound, outbound[-1:])
    assert stood["retraced_per_leg"] == [] and stood["legs_retraced"] == 0.0
    sideways = np.array([outbound[-1]] * 4 + [outbound[-1] + [1, 0]] * 3 + [outbound[-1] + [1, -1]] * 2)
    assert retrace.metric(outbound, outbound, sideways)["retraced_per_leg"] == [False]  # as far aside as back


def test_bfs_goes_around_obstacles():
    blocked = {(1, 0), (1, 1)}
    path = bfs_path((0, 0), (2, 0), lambda x, y: (x, y) not in blocked and -3 <= y <= 3 and -1 <= x <= 3)
    assert path[0] == (0, 0) and path[-1] == (2, 0)
    assert not blocked & set(path) and len(path) == 5


def test_expert_is_selected_per_task():
    env = envs.make("retrace")
    assert type(envs.expert_for(env)).__name__ == "RetraceExpert"


def test_minedojo_mapping():
    forward = to_minedojo_action(retrace.ACTIONS.index("go up"))
    assert forward.tolist() == [1, 0, 0, 12, 12, 0, 0, 0]
    assert to_minedojo_action(retrace.ACTIONS.index("go left"))[1] == 1
    assert to_minedojo_action(retrace.ACTIONS.index("stay"))[:2].tolist() == [0, 0]
    assert to_tile([3.7, 64.0, -2.2]).tolist() == [3, -3]
    obs = from_minedojo_observation({"rgb": np.zeros((3, 8, 10), np.uint8),
                                     "location_stats": {"pos": np.array([1.5, 4.0, 2.5])}})
    assert obs["rgb"].shape == (8, 10, 3) and obs["pos"].tolist() == [1, 2]


def test_minedojo_missing_gives_install_message():
    with pytest.raises(envs.BackendUnavailableError, match="JDK 8"):
        envs.factory("retrace", "minedojo")


def test_miniworld_backend_retraces_first_person(tmp_path):
    from envs.collect import collect
    from envs.retrace_miniworld import ACTIONS, MiniWorldRetraceEnv, turns_between

    env = MiniWorldRetraceEnv()
    check_env(env, skip_render_check=True)
    for seed in (45, 52):  # their first placement leaves no room for 3 legs
        env.reset(seed=seed)
        assert len(env.legs) == 3
    obs, _ = env.reset(seed=1)
    assert obs["rgb"].shape == (64, 64, 3)
    start = obs["pos"].copy()
    heading = env.heading()
    env.step(ACTIONS.index("turn left"))
    assert env.heading() != heading
    assert turns_between("up", "down") == [ACTIONS.index("turn left")] * 2
    assert turns_between("up", "right") == [ACTIONS.index("turn right")]
    env.close()
    summary = collect("retrace", tmp_path, episodes=2, seed=0, backend="miniworld", progress=False)
    assert [e["distance"] for e in summary["episodes"]] == [0.0, 0.0]
    data = load_dataset(tmp_path)
    assert data.info["backend"] == "miniworld" and data.info["action_classes"] == 4
    episode = data.load_episode(0)
    assert np.allclose(episode["obs_pos"][0], episode["obs_pos"][-1]) and not np.allclose(start, 0)
