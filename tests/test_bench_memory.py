"""The memory benchmark's timed memory: same episode memory, its cost added up."""
import numpy as np
import torch

from worldmodel.memory import EpisodeMemory, MemoryConfig
from worldmodel.model import VideoWorldModel, WorldModelConfig

from helpers import TINY, load_script

bench = load_script("bench_memory")


def _rollout(memory_class):
    torch.manual_seed(0)
    model = VideoWorldModel(WorldModelConfig(**TINY))
    memory = memory_class(model, MemoryConfig(rank=4, steps=2, lr=1e-2, seed=3))
    first = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    video = model.rollout(first, ["go left", "go up", "go right"], seed=1, memory=memory)
    return video, memory


def test_timed_memory_learns_and_generates_exactly_as_the_episode_memory_and_counts_its_seconds():
    video, memory = _rollout(EpisodeMemory)
    timed_video, timed = _rollout(bench.TimedMemory)
    assert np.array_equal(timed_video, video)
    assert all(torch.equal(a, b) for a, b in zip(timed.params, memory.params))
    assert timed.losses == memory.losses and len(timed.losses) == 6
    assert timed.seconds["update"] > 0 and timed.seconds["merge"] > 0
