"""The memory probe: labels from a real retrace episode, readouts from a real memory, a probe that can fail."""
import numpy as np
import torch

import envs
from envs.collect import rollout_expert
from tasks.retrace import ACTIONS, DIRECTIONS
from worldmodel.memory import EpisodeMemory, MemoryConfig
from worldmodel.model import VideoWorldModel, WorldModelConfig

from helpers import TINY, load_script

probe = load_script("bench_memory_probe")


def test_leg_signs_follow_the_expert_path():
    env = envs.make("retrace", num_legs=3)
    record = rollout_expert(env, envs.expert_for(env), 10_000)
    env.close()
    signs = probe.leg_signs(record)
    assert len(signs) == 3
    # independent of the subgoal text: the expert's own moves during each leg
    for leg, sign in enumerate(signs):
        moves = [ACTIONS[int(a)] for a, i in zip(record["actions"], record["subgoal_index"]) if i == leg]
        moved = [DIRECTIONS[m.split()[1]] for m in moves if m != "stay"]
        assert moved and {int(np.sign(sum(d))) for d in moved} == {sign}


def test_readouts_are_zero_without_fast_learning_and_differ_between_episodes_with_it():
    env = envs.make("retrace", num_legs=2)
    records = [rollout_expert(env, envs.expert_for(env), seed) for seed in (10_000, 10_001)]
    env.close()
    torch.manual_seed(0)
    model = VideoWorldModel(WorldModelConfig(**TINY))
    model.unet.eval()
    still = EpisodeMemory(model, MemoryConfig(rank=4, steps=0, seed=1))
    out = probe.readouts(model, still, records[0], legs=2, timestep=999)
    assert not out["weights"].any() and not out["effect"].any()
    learning = EpisodeMemory(model, MemoryConfig(rank=4, steps=1, lr=1e-2, seed=1))
    first, second = (probe.readouts(model, learning, r, legs=2, timestep=999) for r in records)
    assert first["weights"].any() and first["effect"].any()
    assert not np.allclose(first["weights"], second["weights"])


def test_the_probe_reads_a_planted_signal_and_not_random_labels():
    rng = np.random.default_rng(0)
    labels = rng.choice([-1, 1], 300)
    x = rng.normal(size=(300, 2000))
    planted = x.copy()
    planted[:, :5] += 0.8 * labels[:, None]
    read = probe.ridge_accuracy(planted[:200], labels[:200], planted[200:], labels[200:], seed=0)
    assert read["accuracy"] >= 0.7 and read["p_above_chance"] < 1e-4
    blind = probe.ridge_accuracy(x[:200], labels[:200], x[200:], labels[200:], seed=0)
    assert 0.35 <= blind["accuracy"] <= 0.65 and blind["p_above_chance"] > 0.01


def test_planted_power_finds_a_large_code_in_noise_and_not_a_tiny_one():
    rng = np.random.default_rng(1)
    x, labels = rng.normal(size=(300, 2000)), rng.choice([-1, 1], 300)
    power = probe.planted_power(x, labels, slice(0, 200), slice(200, None), seed=0)
    assert power["0.2"] >= 0.95 and power["0.02"] <= 0.7
