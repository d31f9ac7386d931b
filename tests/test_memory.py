import argparse
import hashlib

import pytest
import torch

from jobconfig import add_fields, from_args
from worldmodel.memory import (EpisodeMemory, EpisodeMemoryError, MemoryConfig, MemoryOverrides, adapter_parameters,
                               base_parameters)
from worldmodel.model import VideoWorldModel, WorldModelConfig

from helpers import TINY


def _model():
    torch.manual_seed(0)
    return VideoWorldModel(WorldModelConfig(**TINY))


def _latents(model, frames, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, model.config.latent_channels, frames, model.config.latent_size,
                       model.config.latent_size, generator=g)


def _hash(params):
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().numpy().tobytes())
    return h.hexdigest()


def _chunk(model, context):
    return model.generate_chunk(context, ["go left for 3 steps"], generator=torch.Generator().manual_seed(1))


def test_update_changes_only_the_adapter_and_reset_restores_the_base():
    model = _model()
    context = _latents(model, 4, 0)
    before = _chunk(model, context)
    memory = EpisodeMemory(model, MemoryConfig(rank=4, steps=3, lr=1e-2))
    assert len(adapter_parameters(model.unet)) > 0
    assert torch.equal(_chunk(model, context), before)  # a fresh adapter has no effect
    base_hash = _hash(base_parameters(model.unet))
    adapter_hash = _hash(memory.params)
    losses = memory.update(context, _latents(model, 8, 1))
    assert len(losses) == 3 and all(l == l for l in losses)
    assert _hash(base_parameters(model.unet)) == base_hash
    assert _hash(memory.params) != adapter_hash
    assert not torch.equal(_chunk(model, context), before)
    memory.reset()
    assert torch.equal(_chunk(model, context), before)


def test_a_new_episode_memory_on_a_model_that_already_learned_starts_from_the_zero_adapter():
    # The evaluation harness keeps one model per variant and builds a memory per episode:
    # the second episode must not inherit what the first one learned.
    model = _model()
    context = _latents(model, 4, 0)
    before = _chunk(model, context)
    EpisodeMemory(model, MemoryConfig(rank=4, steps=3, lr=1e-2)).update(context, _latents(model, 8, 1))
    assert not torch.equal(_chunk(model, context), before)
    second = EpisodeMemory(model, MemoryConfig(rank=4, steps=3, lr=1e-2, seed=5))
    assert torch.equal(_chunk(model, context), before)
    assert _hash(second.params) == _hash(EpisodeMemory(_model(), MemoryConfig(rank=4, seed=5)).params)
    with pytest.raises(EpisodeMemoryError, match="rank=4.*rank=8.*fresh model"):
        EpisodeMemory(model, MemoryConfig(rank=8))


def test_merged_generation_matches_the_adapter_and_leaves_the_base_exact():
    model = _model()
    context = _latents(model, 4, 0)
    memory = EpisodeMemory(model, MemoryConfig(rank=4, steps=3, lr=1e-2))
    memory.update(context, _latents(model, 8, 1))
    base_hash, adapter_hash = _hash(base_parameters(model.unet)), _hash(memory.params)
    with_adapter = _chunk(model, context)
    with memory.merged():
        folded = _chunk(model, context)
        assert _hash(base_parameters(model.unet)) != base_hash  # really folded in, not bypassed
    assert torch.allclose(folded, with_adapter, atol=1e-4)
    assert _hash(base_parameters(model.unet)) == base_hash and _hash(memory.params) == adapter_hash
    assert torch.equal(_chunk(model, context), with_adapter)


def test_memory_save_load_round_trip(tmp_path):
    model = _model()
    memory = EpisodeMemory(model, MemoryConfig(rank=4, steps=2, lr=1e-2))
    context = _latents(model, 4, 0)
    memory.update(context, _latents(model, 8, 1))
    remembered = _chunk(model, context)
    path = memory.save(tmp_path / "episode.safetensors")
    memory.reset()
    assert not torch.equal(_chunk(model, context), remembered)
    memory.load(path)
    assert torch.equal(_chunk(model, context), remembered)
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(EpisodeMemoryError, match="cannot load"):
        memory.load(tmp_path / "bad.safetensors")


def test_non_finite_step_rolls_the_adapter_back():
    model = _model()
    memory = EpisodeMemory(model, MemoryConfig(rank=4, steps=1, lr=1e-2))
    context = _latents(model, 4, 0)
    memory.update(context, _latents(model, 8, 1))
    good = _hash(memory.params)
    poisoned = _latents(model, 8, 2)
    poisoned[0, 0, 0, 0, 0] = float("nan")
    assert memory.update(context, poisoned) == []
    assert memory.rollbacks == 1 and _hash(memory.params) == good
    # A step that makes the adapter itself non-finite is undone too, Adam's moments and step count included.
    moments = {p: {k: v.clone() for k, v in state.items()} for p, state in memory.optimizer.state.items()}
    memory.optimizer.param_groups[0]["lr"] = float("inf")
    assert memory.update(context, _latents(model, 8, 3)) == []
    assert memory.rollbacks == 2 and _hash(memory.params) == good
    assert memory.optimizer.state.keys() == moments.keys()
    for p, state in memory.optimizer.state.items():
        assert all(torch.equal(state[k], moments[p][k]) for k in state)


def test_variants_train_on_the_windows_they_specify():
    model = _model()
    previous, new = _latents(model, 4, 0), _latents(model, 8, 1)
    window = model.config.window
    local = EpisodeMemory(model, MemoryConfig(rank=4, variant="local"))
    batch, clean = local.training_window(previous, new)
    assert clean == 0 and torch.equal(batch, torch.cat([previous, new], 2)[:, :, -window:])
    original = EpisodeMemory(model, MemoryConfig(rank=4, variant="original"))
    batch, clean = original.training_window(previous, new)
    assert clean == 4 and torch.equal(batch[:, :, 4:], new)
    glob = EpisodeMemory(model, MemoryConfig(rank=4, variant="global", seed=3))
    history = _latents(model, 40, 5)
    glob.history = history
    batch, clean = glob.training_window(previous, new)
    starts = [s for s in range(40 - window + 1) if torch.equal(history[:, :, s:s + window], batch)]
    assert clean == 0 and len(starts) == 1
    with pytest.raises(EpisodeMemoryError, match="variant"):
        MemoryConfig(variant="episodic")


def test_memory_learns_inside_a_no_grad_rollout():
    import numpy as np

    model = _model()
    memory = EpisodeMemory(model, MemoryConfig(rank=4, steps=1, lr=1e-2))
    adapter_hash = _hash(memory.params)
    first = np.zeros((64, 64, 3), dtype=np.uint8)
    video = model.rollout(first, ["go left for 3 steps", "go up for 3 steps"], memory=memory)
    assert video.shape == (17, 64, 64, 3) and len(memory.losses) == 2
    assert _hash(memory.params) != adapter_hash


def test_an_episode_memory_depends_on_its_seed_alone():
    previous, new = _latents(_model(), 4, 0), _latents(_model(), 8, 1)
    learned = []
    for global_seed, memory_seed in ((1, 7), (2, 7), (1, 8)):
        model = _model()
        torch.manual_seed(global_seed)  # whatever the caller's RNG did before
        memory = EpisodeMemory(model, MemoryConfig(rank=4, steps=2, lr=1e-2, seed=memory_seed))
        state = torch.get_rng_state()
        memory.update(previous, new)
        assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
        learned.append(_hash(memory.params))
    assert learned[0] == learned[1] != learned[2]


def test_a_cropped_step_trains_on_one_square_of_every_frame():
    model = _model()
    previous, new = _latents(model, 4, 0), _latents(model, 8, 1)
    memory = EpisodeMemory(model, MemoryConfig(rank=4, steps=1, lr=1e-2, crop=8))
    window, _ = memory.training_window(previous, new)
    squares = [memory.crop(window) for _ in range(4)]
    size = window.shape[-1]
    for square in squares:
        assert square.shape == (*window.shape[:3], 8, 8)
        found = [(y, x) for y in range(size - 7) for x in range(size - 7)
                 if torch.equal(window[..., y:y + 8, x:x + 8], square)]
        assert len(found) == 1  # the same square, taken whole, from every frame
    assert len({tuple(s.flatten()[:4].tolist()) for s in squares}) > 1  # a new square each step
    adapter_hash = _hash(memory.params)
    memory.update(previous, new)
    assert _hash(memory.params) != adapter_hash and len(memory.losses) == 1
    assert torch.equal(EpisodeMemory(model, MemoryConfig(rank=4, crop=0)).crop(window), window)
    for bad in (5, 24):  # not a multiple of the UNet's downsampling (2); larger than the latent
        with pytest.raises(EpisodeMemoryError, match="crop"):
            EpisodeMemory(_model(), MemoryConfig(rank=4, crop=bad))


def test_a_reversed_memory_trains_on_the_window_and_the_window_played_backwards():
    model = _model()
    previous, new = _latents(model, 4, 0), _latents(model, 8, 1)
    forward = EpisodeMemory(model, MemoryConfig(rank=4, steps=1, lr=1e-2, crop=8))
    window, _ = forward.training_window(previous, new)
    square = forward.batch(window)
    backward = EpisodeMemory(model, MemoryConfig(rank=4, steps=1, lr=1e-2, crop=8, reverse=True))
    pair = backward.batch(window)
    assert pair.shape == (2, *square.shape[1:])
    assert torch.equal(pair[0], square[0])  # the same square as without reverse
    assert torch.equal(pair[1], square[0].flip(1))  # its frames in the opposite order
    learned = []
    for reverse in (False, True):
        model = _model()
        memory = EpisodeMemory(model, MemoryConfig(rank=4, steps=1, lr=1e-2, crop=8, reverse=reverse))
        memory.update(previous, new)
        learned.append(_hash(memory.params))
    assert learned[0] != learned[1]


def test_a_decoder_memory_adapts_and_backpropagates_only_through_the_decoder():
    reached = {}
    for targets in ("temporal", "temporal-decoder"):
        model = _model()
        memory = EpisodeMemory(model, MemoryConfig(rank=4, steps=1, lr=1e-2, targets=targets))
        names = [n for n, p in model.unet.named_parameters() if "lora_" in n]
        calls = []
        model.unet.down_blocks[0].register_full_backward_hook(lambda *_: calls.append(1))
        adapter_hash = _hash(memory.params)
        memory.update(_latents(model, 4, 0), _latents(model, 8, 1))
        assert _hash(memory.params) != adapter_hash
        reached[targets] = bool(calls)
        if targets == "temporal-decoder":
            assert names and all(n.startswith(("mid_block.", "up_blocks.")) for n in names)
    assert reached == {"temporal": True, "temporal-decoder": False}


@pytest.mark.parametrize("trainable", [True, False])
def test_the_memory_leaves_the_base_weights_requires_grad_flags_as_the_caller_set_them(trainable):
    model = _model()
    model.unet.requires_grad_(trainable)
    memory = EpisodeMemory(model, MemoryConfig(rank=4, steps=1, lr=1e-2))
    assert all(p.requires_grad == trainable for p in base_parameters(model.unet))
    memory.update(_latents(model, 4, 0), _latents(model, 8, 1))
    assert all(p.requires_grad == trainable for p in base_parameters(model.unet))
    assert all(p.requires_grad for p in memory.params)


def test_benchmark_memory_options_are_the_jobs_and_override_only_what_is_given():
    parser = argparse.ArgumentParser()
    add_fields(parser, MemoryOverrides)
    model = VideoWorldModel(WorldModelConfig(**TINY, temp_lora={"steps": 4, "lr": 1e-3, "crop": 8}))
    given = from_args(MemoryOverrides, parser, parser.parse_args(
        ["--memory-steps", "2", "--memory-variant", "original", "--memory-reverse", "false",
         "--memory-targets", "spatial+temporal"])).memory_config(model)
    assert (given.steps, given.variant, given.reverse, given.targets, given.lr, given.crop) == (
        2, "original", False, "spatial+temporal", 1e-3, 8)
    nothing_given = from_args(MemoryOverrides, parser, parser.parse_args([]))
    assert nothing_given.memory_config(model) == MemoryConfig.for_model(model)
    with pytest.raises(SystemExit):
        from_args(MemoryOverrides, parser, parser.parse_args(["--memory-variant", "nonsense"]))
    with pytest.raises(EpisodeMemoryError, match="--memory-targets"):
        MemoryOverrides(memory_targets="everything")
