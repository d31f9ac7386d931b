import numpy as np

from worldmodel.consistency import revisit_pairs, scene_cuts, scene_revisit_consistency


def test_scene_cuts_counts_hard_cuts_only():
    rng = np.random.default_rng(0)
    a = np.tile(rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8), (10, 1, 1, 1))
    b = np.tile(rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8), (10, 1, 1, 1))
    assert scene_cuts(np.concatenate([a, a])) == 0
    assert scene_cuts(np.concatenate([a, b, a])) == 2


def test_src_prefers_consistent_revisits(retrace_dataset):
    root, _ = retrace_dataset
    from envs.dataset import load_dataset

    episode = load_dataset(root).load_episode(0)
    pairs = revisit_pairs("retrace", episode)
    frames = episode["frames"]
    assert pairs and all(t2 - t1 >= 16 for t1, t2 in pairs)
    assert all(np.array_equal(episode["obs_pos"][t1], episode["obs_pos"][t2]) for t1, t2 in pairs)
    noisy = frames.copy()
    later = [t2 for _, t2 in pairs]
    noisy[later] = np.random.default_rng(0).integers(0, 256, noisy[later].shape, dtype=np.uint8)
    assert scene_revisit_consistency(frames, pairs) > 0.95 > scene_revisit_consistency(noisy, pairs)


def test_cube_revisits_need_the_layout_to_leave_and_come_back():
    still = np.zeros((40, 2, 3))
    assert revisit_pairs("return_cubes", {"obs_cube_pos": still}) == []
    moved = still.copy()
    moved[5:30, 0, 1] = 0.2
    pairs = revisit_pairs("return_cubes", {"obs_cube_pos": moved})
    assert pairs[0] == (0, 30) and all(t1 == 0 for t1, _ in pairs)
