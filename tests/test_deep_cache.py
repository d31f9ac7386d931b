import pytest
import torch

from worldmodel.deep_cache import DeepFeatureCache
from worldmodel.model import CheckpointError, SamplingOverrides, VideoWorldModel, WorldModelConfig

from helpers import TINY


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VideoWorldModel(WorldModelConfig(**{**TINY, "sample_steps": 4}))


def _inputs(model, count, batch=1):
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    shape = (batch, cfg.unet_in_channels, cfg.window, cfg.latent_size, cfg.latent_size)
    return [torch.randn(shape, generator=g) for _ in range(count)], model.embed(["go left"] * batch)


class DeepRuns:
    """Counts the calls on which the mid block really computes (its first ResNet runs)."""

    def __init__(self, unet):
        self.count = 0
        self.resnet = unet.mid_block.resnets[0]

    def __enter__(self):
        self.hook = self.resnet.register_forward_hook(self._seen)
        return self

    def __exit__(self, *exc):
        self.hook.remove()

    def _seen(self, *_):
        self.count += 1


def test_the_deep_blocks_run_on_one_call_in_interval_and_a_reused_call_keeps_their_last_features(model):
    unet = model.unet
    xs, text = _inputs(model, 5)
    t = torch.tensor(500)
    with torch.no_grad():
        full = [model.denoise(unet, x, t, text) for x in xs]
        with DeepRuns(unet) as runs, DeepFeatureCache(unet, interval=2):
            same_input = [model.denoise(unet, xs[0], t, text), model.denoise(unet, xs[0], t, text)]
            reused = model.denoise(unet, xs[1], t, text)  # third call: full again
            fourth = model.denoise(unet, xs[2], t, text)  # reuses xs[1]'s deep features
    assert runs.count == 2
    # Reusing the features of the very same input changes nothing.
    assert torch.equal(same_input[0], full[0]) and torch.equal(same_input[1], full[0])
    assert torch.equal(reused, full[1])
    # A reused call is not the full call on its input, yet the top blocks did see that input.
    assert not torch.allclose(fourth, full[2], atol=1e-5)
    assert not torch.allclose(fourth, full[1], atol=1e-5)


def test_a_call_with_another_batch_is_full_and_leaving_restores_the_unet(model):
    unet = model.unet
    (one,), text_one = _inputs(model, 1)
    (two,), text_two = _inputs(model, 1, batch=2)
    t = torch.tensor(300)
    with torch.no_grad():
        expected = model.denoise(unet, two, t, text_two)
        with DeepRuns(unet) as runs:
            with DeepFeatureCache(unet, interval=4):
                model.denoise(unet, one, t, text_one)
                assert torch.equal(model.denoise(unet, two, t, text_two), expected)
            assert runs.count == 2
            assert all("forward" not in vars(block) for block in unet.modules())
            assert torch.equal(model.denoise(unet, two, t, text_two), expected)
            assert runs.count == 3


def test_sampling_with_a_deep_cache_interval_runs_the_deep_blocks_on_every_other_step(model):
    context = torch.randn(1, model.config.latent_channels, model.config.context_frames, model.config.latent_size,
                          model.config.latent_size, generator=torch.Generator().manual_seed(1))

    def sample(interval):
        cached = SamplingOverrides(deep_cache_interval=interval).apply_sampling(model)
        return cached.generate_chunk(context, ["go left"], generator=torch.Generator().manual_seed(0))

    plain = sample(1)
    with DeepRuns(model.unet) as runs:
        reused = sample(2)
    assert runs.count == model.config.sample_steps // 2
    assert torch.isfinite(reused).all() and not torch.allclose(reused, plain, atol=1e-5)
    assert torch.equal(sample(1), plain)


def test_a_deep_cache_interval_below_one_is_a_checkpoint_error(model):
    with pytest.raises(CheckpointError, match="deep_cache_interval 0"):
        SamplingOverrides(deep_cache_interval=0).apply_sampling(model)
