import json

import numpy as np
import pytest

from envs.dataset import ChunkDataset, DatasetError, load_dataset
from tasks.base import CHUNK_FRAMES


def test_collect_writes_loadable_dataset(cubes_dataset):
    root, summary = cubes_dataset
    assert summary["task"] == "return_cubes" and summary["backend"] == "embedded"
    assert [e["seed"] for e in summary["episodes"]] == [7, 8]
    assert all(e["distance"] < 0.02 for e in summary["episodes"])
    assert json.loads((root / "summary.json").read_text()) == summary
    data = load_dataset(root)
    assert data.info["total_episodes"] == 2
    episode = data.load_episode(0)
    length = data.episodes[0]["length"]
    assert episode["frames"].shape == (length + 1, 64, 64, 3) and episode["frames"].dtype == np.uint8
    assert episode["actions"].shape == (length, 4)
    assert episode["obs_cube_pos"].shape == (length + 1, 2, 3)
    assert length % CHUNK_FRAMES == 0
    assert np.all(np.diff(episode["subgoal_index"]) >= 0)


def test_chunk_dataset_samples(cubes_dataset):
    root, _ = cubes_dataset
    ds = ChunkDataset(root, context_frames=4)
    first = ds[0]
    assert first["context"].shape == (4, 64, 64, 3) and first["context_len"] == 1
    assert first["target"].shape == (CHUNK_FRAMES, 64, 64, 3)
    assert first["actions"].shape == (CHUNK_FRAMES, 4)
    assert first["text"].startswith("move the red cube")
    later = ds[3]
    episode = load_dataset(root).load_episode(later["episode"])
    s = later["start"]
    assert later["context_len"] == 4
    assert np.array_equal(later["context"].numpy(), episode["frames"][s - 3:s + 1])
    assert np.array_equal(later["target"].numpy(), episode["frames"][s + 1:s + 1 + CHUNK_FRAMES])


def test_collect_is_deterministic(cubes_dataset, tmp_path):
    from envs.collect import collect

    root, _ = cubes_dataset
    collect("return_cubes", tmp_path, episodes=1, seed=7, progress=False)
    a = load_dataset(root).load_episode(0)
    b = load_dataset(tmp_path).load_episode(0)
    assert np.array_equal(a["frames"], b["frames"]) and np.array_equal(a["actions"], b["actions"])


def test_missing_or_corrupt_dataset_is_a_clear_error(cubes_dataset, tmp_path):
    with pytest.raises(DatasetError, match="slowfast collect"):
        load_dataset(tmp_path)
    root, _ = cubes_dataset
    broken = tmp_path / "broken"
    (broken / "meta").mkdir(parents=True)
    (broken / "data").mkdir()
    (broken / "meta" / "info.json").write_text((root / "meta" / "info.json").read_text())
    (broken / "meta" / "episodes.jsonl").write_text((root / "meta" / "episodes.jsonl").read_text())
    (broken / "data" / "episode_000000.npz").write_bytes(b"not a zip file")
    with pytest.raises(DatasetError, match="cannot read episode"):
        load_dataset(broken).load_episode(0)


def test_branches_record_the_other_first_legs_from_the_same_start(tmp_path):
    from envs.collect import collect
    from tasks.retrace import DIRECTIONS

    summary = collect("retrace", tmp_path, episodes=2, seed=0, progress=False, branches=True)
    data = load_dataset(tmp_path)
    assert data.info["branches"] and data.info["total_episodes"] == len(data) == len(summary["episodes"])
    mains = [i for i, e in enumerate(data.episodes) if "branch_of" not in e]
    assert [data.episodes[i]["seed"] for i in mains] == [0, 1]
    branches = [e for e in data.episodes if "branch_of" in e]
    assert branches and [e["branch"] for e in summary["episodes"]] == ["branch_of" in e for e in data.episodes]
    for entry in branches:
        main = data.episodes[entry["branch_of"]]
        assert entry["seed"] == main["seed"] and entry["length"] == CHUNK_FRAMES
        (leg,) = entry["subgoals"]
        first = main["subgoals"][0]
        assert leg["params"]["steps"] == first["params"]["steps"]
        assert leg["params"]["direction"] != first["params"]["direction"]
        branch = data.load_episode(entry["episode_index"])
        assert np.array_equal(branch["frames"][0], data.load_episode(entry["branch_of"])["frames"][0])
        moved = branch["obs_pos"][-1] - branch["obs_pos"][0]  # walked straight the whole leg
        assert np.array_equal(moved, np.array(DIRECTIONS[leg["params"]["direction"]]) * leg["params"]["steps"])
    assert len(ChunkDataset(tmp_path)) == sum(e["length"] // CHUNK_FRAMES for e in data.episodes)


def test_parallel_collection_writes_the_same_dataset_as_one_process(tmp_path):
    from agent.cli import CollectConfig
    from jobconfig import ConfigError
    from envs.collect import collect

    one, two = tmp_path / "one", tmp_path / "two"
    collect("retrace", one, episodes=2, seed=5, progress=False, branches=True)
    collect("retrace", two, episodes=2, seed=5, progress=False, branches=True, workers=2)
    for name in ("meta/episodes.jsonl", "meta/info.json", "summary.json"):
        assert (one / name).read_text() == (two / name).read_text(), name
    a, b = load_dataset(one), load_dataset(two)
    assert len(a) > 2 and not (two / ".shards").exists()
    for i in range(len(a)):
        ea, eb = a.load_episode(i), b.load_episode(i)
        assert ea.keys() == eb.keys() and all(np.array_equal(ea[k], eb[k]) for k in ea)
    with pytest.raises(ConfigError, match="--workers must be >= 1"):
        CollectConfig(task="retrace", workers=0)


def test_cube_branches_carry_the_first_cube_to_each_other_place(tmp_path):
    from envs.collect import collect
    from tasks.return_cubes import PLACES

    collect("return_cubes", tmp_path, episodes=1, seed=3, progress=False, branches=True)
    data = load_dataset(tmp_path)
    main, *branches = data.episodes
    first = main["subgoals"][0]["params"]
    assert len(branches) == len(PLACES) - 1
    assert {b["subgoals"][0]["params"]["place"] for b in branches} == set(PLACES) - {first["place"]}
    for entry in branches:
        assert entry["branch_of"] == 0 and entry["subgoals"][0]["params"]["cube"] == first["cube"]
        branch = data.load_episode(entry["episode_index"])
        assert np.array_equal(branch["frames"][0], data.load_episode(0)["frames"][0])
        assert entry["metric"]["max_displacement"][first["cube"]] > 0.1  # the cube was carried away
