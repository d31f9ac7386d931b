import contextlib
import copy
import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from envs.dataset import load_dataset
from worldmodel.model import (CheckpointError, FrameAxisConv3d, SamplingOverrides, SingleKeyAttnProcessor,
                              VideoWorldModel, WorldModelConfig, build_unet, with_motion_input,
                              with_text_in_time_embedding)
from worldmodel.text import TextEncoder, TextEncoderError, WhitenedText
from worldmodel.train import TrainConfig, corrupt_context, lr_factor, run_train

from helpers import TINY as TINY_UNET

TINY = dict(TINY_UNET, sample_steps=3)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return VideoWorldModel(WorldModelConfig(**TINY))


def _window(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, s = model.config.latent_channels, model.config.latent_size
    context = torch.randn(batch, c, model.config.context_frames, s, s, generator=g)
    target = torch.randn(batch, c, model.config.chunk_frames, s, s, generator=g)
    return context, target


def test_frame_axis_convolutions_compute_what_the_temporal_conv3d_layers_do():
    torch.manual_seed(0)
    plain = build_unet(WorldModelConfig(**TINY))
    fast = VideoWorldModel(WorldModelConfig(**TINY), unet=copy.deepcopy(plain)).unet
    swapped = [n for n, m in fast.named_modules() if isinstance(m, FrameAxisConv3d)]
    temporal = [n for n, m in plain.named_modules() if type(m) is torch.nn.Conv3d and m.kernel_size[1:] == (1, 1)]
    assert swapped == temporal and len(swapped) > 0
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 50, 12, 8, 8, requires_grad=True)
    t, text = torch.tensor([10, 900]), torch.randn(2, 1, 384)
    expected = plain(x, t, encoder_hidden_states=text).sample
    got = fast(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), x)
    (grad_got,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-4, atol=1e-5)


def test_cross_attention_over_the_one_text_key_skips_the_kernel_and_computes_the_same(monkeypatch):
    torch.manual_seed(0)
    plain = build_unet(WorldModelConfig(**TINY))
    fast = copy.deepcopy(plain)
    fast.set_attn_processor(SingleKeyAttnProcessor())
    plain.eval(), fast.eval()  # the temporal convolutions' dropout would make the gradients differ
    cross = [m for m in plain.modules() if getattr(m, "is_cross_attention", False)]
    assert cross
    kernel_calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: kernel_calls.append(a[1].shape[2]) or sdpa(*a, **k))
    x, t = torch.randn(2, 50, 12, 8, 8), torch.tensor([10, 900])
    for tokens in (1, 2):
        text = torch.randn(2, tokens, 384)
        results = []
        for unet in (plain, fast):
            kernel_calls.clear()
            unet.zero_grad()
            out = unet(x, t, encoder_hidden_states=text).sample
            out.square().sum().backward()
            results.append((out, {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None},
                            list(kernel_calls)))
        (expected, grads_expected, calls_expected), (got, grads_got, calls_got) = results
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        for name, grad in grads_expected.items():
            # With one key, the query and key projections and the norm before the layer cannot change
            # the output: their gradient is zero, and the fast path leaves it unset.
            torch.testing.assert_close(grads_got.get(name, torch.zeros_like(grad)), grad, rtol=1e-4, atol=1e-4)
        assert len(grads_expected) - len(grads_got) == (4 * len(cross) if tokens == 1 else 0)
        skipped = len(cross) if tokens == 1 else 0
        assert len(calls_expected) - len(calls_got) == skipped
        assert 1 not in calls_got


def test_masked_loss_ignores_context_frames(tiny_model):
    context, target = _window(tiny_model)
    text = tiny_model.text_encoder(["go left for 3 steps", "stay"])
    context_len = torch.tensor([4, 2])
    unet = tiny_model.unet
    original_forward = unet.forward

    def garbage_on_context(*args, **kwargs):
        out = original_forward(*args, **kwargs)
        out.sample[:, :, :tiny_model.config.context_frames] += 1000.0
        return out

    clean = tiny_model.training_loss(context, context_len, target, text, torch.Generator().manual_seed(1))
    unet.forward = garbage_on_context
    try:
        spoiled = tiny_model.training_loss(context, context_len, target, text, torch.Generator().manual_seed(1))
    finally:
        unet.forward = original_forward
    assert torch.equal(clean, spoiled)
    # ... while the target frames do matter.
    other = tiny_model.training_loss(context, context_len, target + 1, text, torch.Generator().manual_seed(1))
    assert not torch.equal(clean, other)


def test_empty_context_slots_are_zeroed_and_flagged(tiny_model):
    context, target = _window(tiny_model)
    sample = tiny_model.window_input(context, torch.tensor([1, 0]), target)
    c = tiny_model.config.latent_channels
    assert torch.equal(sample[0, :c, 3], context[0, :, 3])
    assert sample[0, :c, :3].abs().sum() == 0 and sample[1, :c, :4].abs().sum() == 0
    assert sample[0, c, :, 0, 0].tolist() == [0, 0, 0, 1] + [0] * tiny_model.config.chunk_frames


def test_latent_space_is_lossless_with_shift_and_scale():
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64, 3), dtype=np.uint8)
    model = VideoWorldModel(WorldModelConfig(**TINY, latent_shift=-0.45, latent_scale=1.8))
    latents = model.latent.encode(frames)
    assert latents.shape == (2, 48, 3, 16, 16)
    assert np.array_equal(model.latent.decode(latents), frames)


def test_tile_aligned_latent_pads_losslessly_and_scrolls_crafter_by_whole_cells():
    from envs.retrace_crafter import CrafterRetraceEnv

    model = VideoWorldModel(WorldModelConfig(**TINY, latent_factor=7, latent_shift=-0.45, latent_scale=1.8))
    env = CrafterRetraceEnv()
    obs, _ = env.reset(seed=20)
    frames, moves = [obs["rgb"].copy()], []
    for action in [1] * 3 + [3] * 3:  # left, then up, where the terrain varies
        before = env.player_pos()
        obs, *_ = env.step(action)
        frames.append(obs["rgb"].copy())
        moves.append(env.player_pos() - before)
    latents = model.latent.encode(np.stack(frames)[None])
    assert latents.shape == (1, 147, 7, 10, 10)
    assert np.array_equal(model.latent.decode(latents)[0], np.stack(frames))
    for i, (dx, dy) in enumerate(moves):
        # The view follows the player: the terrain moves one cell against the step. The
        # player's cell and the one it left differ; every other inner cell matches exactly.
        scrolled = torch.roll(latents[0, :, i], (-int(dy), -int(dx)), dims=(1, 2))[:, 1:8, 1:8]
        same = ((scrolled - latents[0, :, i + 1, 1:8, 1:8]).abs().amax(0) < 1e-6).sum()
        assert (dx, dy) != (0, 0) and same >= 47
    with pytest.raises(CheckpointError, match="multiple of 2"):
        VideoWorldModel(WorldModelConfig(**TINY, latent_factor=5))  # 13 cells cannot be halved
    with pytest.raises(CheckpointError, match="latent_factor must be >= 1"):
        VideoWorldModel(WorldModelConfig(**TINY, latent_factor=0))


def test_a_tile_latent_model_trains_saves_and_imagines_whole_frames(retrace_dataset, tmp_path):
    root, _ = retrace_dataset
    with pytest.raises(ValueError, match="--latent-factor"):
        TrainConfig(latent_factor=0)
    with pytest.raises(ValueError, match="--motion-radius"):
        TrainConfig(motion_radius=2, prediction_type="v_prediction")
    run_train(TrainConfig(task="retrace", data=str(root), out=str(tmp_path / "run"), max_steps=2, batch_size=2,
                          val_episodes=1, warmup_steps=1, progress=False, latent_factor=7, block_out_channels=(16, 32),
                          attention_head_dim=2, norm_num_groups=8, prediction_type="context_residual",
                          motion_radius=3))
    model = VideoWorldModel.from_pretrained(tmp_path / "run")
    assert (model.config.latent_factor, model.config.latent_size, model.config.latent_channels) == (7, 10, 147)
    assert model.config.motion_radius == 3 and model.unet.config.in_channels == 2 * 147 + 2
    frames = load_dataset(root).load_episode(0)["frames"][:4]
    chunk = model.generate_chunk(model.latent.encode(frames[None]), ["go left for 3 steps"], num_steps=2,
                                 generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (1, 147, model.config.chunk_frames, 10, 10)
    assert model.latent.decode(chunk).shape == (1, model.config.chunk_frames, 64, 64, 3)


class OracleUNet(torch.nn.Module):
    """Returns the exact v, eps or residual output that leads every noised frame to ``clean``."""

    def __init__(self, model, clean, anchor=None):
        super().__init__()
        self.model, self.clean, self.anchor = model, clean, anchor

    def forward(self, sample, t, encoder_hidden_states):
        fc, c = self.model.config.context_frames, self.model.config.latent_channels
        noisy = sample[:, :c, fc:]
        alpha_bar = self.model.train_scheduler.alphas_cumprod[int(t)]
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        clean = self.clean.expand_as(noisy)
        eps = (noisy - a * clean) / s
        out = {"epsilon": eps, "v_prediction": a * eps - s * clean}.get(self.model.config.prediction_type)
        if out is None:
            anchor = self.anchor.repeat(noisy.shape[0] // self.anchor.shape[0], 1, 1, 1, 1)
            out = self.model.regression_target(clean, eps, torch.full((noisy.shape[0],), int(t)), anchor)
        padded = torch.cat([torch.zeros_like(sample[:, :c, :fc]), out], dim=2)
        return type("Output", (), {"sample": padded})()


@pytest.mark.parametrize("sampler", ["dpmsolver++", "ddim"])
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "context_residual"])
def test_sampler_reaches_the_clean_latents_given_exact_predictions(prediction_type, sampler):
    model = VideoWorldModel(WorldModelConfig(**{**TINY, "sample_steps": 20}, prediction_type=prediction_type,
                                             sampler=sampler, residual_std=0.7))
    context, target = _window(model, batch=1)
    clean = target.clamp(-1, 1)
    chunk = model.generate_chunk(context, ["go left"], generator=torch.Generator().manual_seed(0),
                                 unet=OracleUNet(model, clean, anchor=context[:, :, -1:]))
    assert torch.allclose(chunk, clean, atol=1e-3)


def test_static_tolerance_copies_only_the_cells_that_stay_within_it_of_the_last_context_frame():
    model = VideoWorldModel(WorldModelConfig(**{**TINY, "sample_steps": 20}))
    f, fc, fg = model.config.latent_factor, model.config.context_frames, model.config.chunk_frames
    rng = np.random.default_rng(0)
    last = rng.integers(60, 190, size=(64, 64, 3), dtype=np.uint8)
    truth = np.repeat(last[None], fg, axis=0).astype(np.int16)
    truth[:, :f, :f] += 3  # one cell off by a few grey levels, as sampler noise leaves it
    truth[:, f:2 * f, :f, 0] += 40  # the cell below it moves
    context = model.latent.encode(np.repeat(last[None, None], fc, axis=1))
    unet = OracleUNet(model, model.latent.encode(truth.astype(np.uint8)[None]))

    def sample(tolerance):
        chunk = SamplingOverrides(static_tolerance=tolerance).apply_sampling(model).generate_chunk(
            context, ["go left"], generator=torch.Generator().manual_seed(0), unet=unet)
        return model.latent.decode(chunk)[0].astype(np.int16)

    plain, kept = sample(0.0), sample(8.0)
    assert np.abs(plain - truth).max() <= 1
    assert np.array_equal(kept[:, :f, :f], np.repeat(last[None, :f, :f], fg, axis=0))
    assert np.abs(kept[:, f:2 * f, :f] - truth[:, f:2 * f, :f]).max() <= 1
    assert np.array_equal(kept[:, :, f:], np.repeat(last[None, :, f:], fg, axis=0))
    with pytest.raises(ValueError, match="static_tolerance"):
        sample(-1.0)


class PassRecorder(torch.nn.Module):
    """The real UNet, recording for each batch row whether it saw context and the subgoal text."""

    def __init__(self, model, text):
        super().__init__()
        self.model, self.text, self.calls = model, text, []

    def forward(self, sample, t, encoder_hidden_states):
        c, fc = self.model.config.latent_channels, self.model.config.context_frames
        saw_context = (sample[:, c, :fc].flatten(1).abs().sum(dim=1) > 0).tolist()
        saw_text = [torch.equal(row, self.text[0]) for row in encoder_hidden_states]
        self.calls.append(list(zip(saw_context, saw_text)))
        return self.model.unet(sample, t, encoder_hidden_states=encoder_hidden_states)


@pytest.mark.parametrize("guidance, passes", [
    ((2.0, 5.0), [(False, False), (True, False), (True, True)]),
    ((1.0, 2.0), [(True, False), (True, True)]),
    ((1.0, 1.0), [(True, True)]),
    ((0.0, 0.0), [(False, False)]),
])
def test_guidance_runs_only_the_passes_with_nonzero_weight(tiny_model, guidance, passes):
    context, _ = _window(tiny_model, batch=1)
    recorder = PassRecorder(tiny_model, tiny_model.text_encoder(["go left"]))
    guided = SamplingOverrides(image_guidance=guidance[0], text_guidance=guidance[1]).apply_sampling(tiny_model)
    guided.generate_chunk(context, ["go left"], generator=torch.Generator().manual_seed(0), unet=recorder)
    assert recorder.calls == [passes] * tiny_model.config.sample_steps


def test_steps_outside_the_guidance_interval_run_the_text_pass_alone(tiny_model):
    context, _ = _window(tiny_model, batch=1)
    recorder = PassRecorder(tiny_model, tiny_model.text_encoder(["go left"]))
    guided = SamplingOverrides(image_guidance=2.0, text_guidance=5.0, guidance_t_min=500).apply_sampling(tiny_model)
    guided.generate_chunk(context, ["go left"], generator=torch.Generator().manual_seed(0), unet=recorder)
    sampler = type(tiny_model.sampler).from_config(tiny_model.sampler.config)
    sampler.set_timesteps(tiny_model.config.sample_steps)
    expected = [[(False, False), (True, False), (True, True)] if t >= 500 else [(True, True)]
                for t in sampler.timesteps]
    assert recorder.calls == expected and [(True, True)] in expected and len(expected[0]) == 3

    def sample(**overrides):
        return SamplingOverrides(**overrides).apply_sampling(tiny_model).generate_chunk(
            context, ["go left"], generator=torch.Generator().manual_seed(0))

    # Guided on no step (every timestep >= 1) is the text pass alone, i.e. g_i = g_t = 1.
    unguided = sample(image_guidance=1.0, text_guidance=1.0)
    assert torch.equal(sample(image_guidance=2.0, text_guidance=5.0, guidance_t_min=0, guidance_t_max=0), unguided)
    assert not torch.allclose(sample(image_guidance=2.0, text_guidance=5.0), unguided, atol=1e-4)


def test_a_reversed_guidance_interval_is_a_checkpoint_error(tiny_model):
    with pytest.raises(CheckpointError, match="guidance_t_min <= guidance_t_max"):
        SamplingOverrides(guidance_t_min=600, guidance_t_max=400).apply_sampling(tiny_model)


def test_skipped_passes_give_the_three_pass_result(tiny_model):
    context, _ = _window(tiny_model, batch=1)

    def sample(image_guidance):
        guided = SamplingOverrides(image_guidance=image_guidance, text_guidance=1.0).apply_sampling(tiny_model)
        return guided.generate_chunk(context, ["go left"], generator=torch.Generator().manual_seed(0))

    # 1 + 1e-6 keeps all three passes, two of them with weights +-1e-6.
    assert torch.allclose(sample(1.0), sample(1.0 + 1e-6), atol=1e-4)
    assert not torch.allclose(sample(1.0), sample(2.0), atol=1e-4)


def test_guidance_rescale_gives_the_sampler_the_text_pass_spread(tiny_model, monkeypatch):
    context, _ = _window(tiny_model, batch=1)
    sampler_type, step = type(tiny_model.sampler), type(tiny_model.sampler).step
    text_parts, given = [], []

    class TextPassRecorder(torch.nn.Module):
        def forward(self, sample, t, encoder_hidden_states):
            out = tiny_model.unet(sample, t, encoder_hidden_states=encoder_hidden_states)
            text_parts.append(out.sample[-1:, :, tiny_model.config.context_frames:])  # the text pass is last
            return out

    def recording_step(self, model_output, *args, **kwargs):
        given.append(model_output)
        return step(self, model_output, *args, **kwargs)

    monkeypatch.setattr(sampler_type, "step", recording_step)

    def sample(text_guidance, rescale):
        text_parts.clear(), given.clear()
        guided = SamplingOverrides(image_guidance=1.0, text_guidance=text_guidance,
                                   guidance_rescale=rescale).apply_sampling(tiny_model)
        return guided.generate_chunk(context, ["go left"], generator=torch.Generator().manual_seed(0),
                                     unet=TextPassRecorder())

    # A random tiny UNet barely reads its text, so the guidance is made large enough to show.
    plain = sample(40.0, 0.0)
    assert not torch.allclose(given[0].std(), text_parts[0].std(), rtol=1e-2)
    rescaled = sample(40.0, 1.0)
    for text_part, output in zip(text_parts, given):
        torch.testing.assert_close(output.std(), text_part.std(), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(plain, rescaled, atol=1e-4)
    # With the text pass alone there is nothing to rescale.
    assert torch.equal(sample(1.0, 0.0), sample(1.0, 1.0))
    with pytest.raises(ValueError, match="text pass"):
        sample(0.0, 0.7)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample(4.0, 1.5)


def test_v_prediction_regresses_velocity_and_epsilon_regresses_noise():
    v_model = VideoWorldModel(WorldModelConfig(**TINY))
    eps_model = VideoWorldModel(WorldModelConfig(**TINY, prediction_type="epsilon"))
    _, clean = _window(v_model)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([10, 990])
    noisy = v_model.train_scheduler.add_noise(clean, noise, t)
    v = v_model.regression_target(clean, noise, t)
    alpha_bar = v_model.train_scheduler.alphas_cumprod[t][:, None, None, None, None]
    # The x0 estimate from v has no 1/alpha in it: what makes v robust at t ~ T.
    assert torch.allclose(alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * v, clean, atol=1e-4)
    assert torch.equal(eps_model.regression_target(clean, noise, t), noise)


def test_context_residual_output_zero_means_repeating_the_last_context_frame():
    model = VideoWorldModel(WorldModelConfig(**TINY, prediction_type="context_residual", residual_std=0.7))
    context, clean = _window(model)
    anchor = context[:, :, -1:]
    still = anchor.expand_as(clean)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([20, 400])
    noisy = model.train_scheduler.add_noise(still, noise, t)
    target = model.regression_target(still, noise, t, anchor)
    # Where the chunk repeats the anchor, the target is small: no noise to copy through the UNet.
    assert target.abs().mean() < 0.25 * noise.abs().mean()
    assert torch.allclose(model.residual_x0(noisy, target, t, anchor), still, atol=1e-4)
    moved = model.regression_target(clean, noise, t, anchor)
    assert torch.allclose(model.residual_x0(model.train_scheduler.add_noise(clean, noise, t), moved, t, anchor),
                          clean, atol=1e-4)
    with pytest.raises(CheckpointError, match="prediction_type"):
        VideoWorldModel(WorldModelConfig(**TINY, prediction_type="sample"))
    with pytest.raises(CheckpointError, match="sampler"):
        VideoWorldModel(WorldModelConfig(**TINY, sampler="euler"))
    with pytest.raises(CheckpointError, match="guidance_rescale"):
        VideoWorldModel(WorldModelConfig(**TINY, guidance_rescale=-0.5))


def _motion_model(radius=2):
    torch.manual_seed(0)
    return VideoWorldModel(WorldModelConfig(**TINY, prediction_type="context_residual", residual_std=0.7,
                                            motion_radius=radius))


def _translated(last, dx, dy):
    """``last`` (B, C, 1, h, w) moved by (dx, dy) whole cells, the uncovered cells its mean."""
    moved = last.mean(dim=(-2, -1), keepdim=True).expand_as(last).clone()
    h, w = last.shape[-2:]
    moved[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        last[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return moved


def test_motion_anchor_follows_the_translation_a_noised_frame_shows_and_is_the_last_frame_at_pure_noise():
    model = _motion_model(radius=2)
    last = torch.randn(1, model.config.latent_channels, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    moves = [(0, 0), (1, 0), (0, -2), (-1, 1)]
    clean = torch.cat([_translated(last, dx, dy) for dx, dy in moves], dim=2)
    # Block by block: a frame whose top half scrolls while its bottom half stays put.
    split = torch.cat([_translated(last, 1, 0)[..., :8, :], last[..., 8:, :]], dim=-2)
    clean = torch.cat([clean, split], dim=2)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    for t in (50, 300):
        alpha, sigma = (v.view(-1, 1, 1, 1, 1) for v in model._alpha_sigma(torch.tensor([t])))
        assert torch.allclose(model.anchor(last, alpha * clean + sigma * noise, torch.tensor([t])), clean, atol=1e-4)
    terminal = VideoWorldModel(replace(model.config, zero_terminal_snr=True), model.unet)
    assert torch.allclose(terminal.anchor(last, noise, torch.tensor([999])), last.expand_as(clean), atol=1e-3)
    plain = VideoWorldModel(replace(model.config, motion_radius=0))
    assert plain.anchor(last, noise, torch.tensor([50])) is last


def test_a_new_motion_input_keeps_the_outputs_and_learns_to_read_the_anchor(tiny_model):
    residual = VideoWorldModel(replace(tiny_model.config, prediction_type="context_residual", residual_std=0.7),
                               copy.deepcopy(tiny_model.unet), tiny_model.text_encoder)
    config = replace(residual.config, motion_radius=2)
    grown = VideoWorldModel(config, with_motion_input(copy.deepcopy(residual.unet), config), tiny_model.text_encoder)
    context, target = _window(residual)
    text = residual.embed(["go left", "go up"])
    t = torch.tensor([100, 700])
    before = residual.denoise(residual.unet, residual.window_input(context, torch.tensor([4, 4]), target), t, text)
    anchor = grown.anchor(context[:, :, -1:], target, t)
    after = grown.denoise(grown.unet, grown.window_input(context, torch.tensor([4, 4]), target, anchor), t, text)
    assert torch.equal(after, before)
    loss = grown.training_loss(context, torch.tensor([4, 4]), target, text, torch.Generator().manual_seed(0), t)
    loss.backward()
    c = config.latent_channels
    assert grown.unet.conv_in.weight.grad[:, c + 2:].abs().sum() > 0
    # Temp-LoRA's whole-window loss anchors every frame on the window's first one, moved.
    grown.unet.zero_grad()
    grown.whole_window_loss(torch.cat([context, target], dim=2), grown.empty_text(2),
                            torch.Generator().manual_seed(0)).backward()
    assert grown.unet.conv_in.weight.grad[:, c + 2:].abs().sum() > 0
    with pytest.raises(CheckpointError, match="input"):
        VideoWorldModel(config, copy.deepcopy(residual.unet))
    with pytest.raises(CheckpointError, match="context_residual"):
        VideoWorldModel(replace(tiny_model.config, motion_radius=2))


def test_a_motion_model_samples_reloads_identically_and_lands_on_moved_frames(tmp_path):
    model = _motion_model(radius=1)
    context, target = _window(model, batch=1)
    chunk = model.generate_chunk(context, ["go left"], generator=torch.Generator().manual_seed(0))
    assert chunk.shape == target.shape and torch.isfinite(chunk).all()
    model.save_pretrained(tmp_path / "motion", dtype=torch.float32)
    loaded = VideoWorldModel.from_pretrained(tmp_path / "motion")
    assert loaded.config.motion_radius == 1 and loaded.unet.config.in_channels == 2 * model.config.latent_channels + 2
    assert torch.equal(loaded.generate_chunk(context, ["go left"], generator=torch.Generator().manual_seed(0)), chunk)
    # Given exact outputs around the anchor the UNet is shown, the sampler lands on the clean
    # frames, and on a scrolled chunk the anchor ends on the scrolled frame.
    last = context[:, :, -1:]
    for clean in (target.clamp(-1, 1), _translated(last, 1, 0).expand_as(target)):
        oracle = MotionOracleUNet(model, clean)
        chunk = model.generate_chunk(context, ["go left"], generator=torch.Generator().manual_seed(0), num_steps=20,
                                     unet=oracle)
        assert torch.allclose(chunk, clean, atol=1e-3)
    assert torch.allclose(oracle.anchor, clean, atol=1e-3)


def test_snap_start_resumes_from_the_moved_frame_the_first_estimate_shows(tmp_path):
    model = _motion_model(radius=2)
    context, _ = _window(model, batch=1)
    last = context[:, :, -1:]
    moves = [(1, 0), (2, 0), (2, -1), (0, 2)] * (model.config.chunk_frames // 4)
    clean = torch.cat([_translated(last, dx, dy) for dx, dy in moves], dim=2)
    calls = []

    class CountingOracle(MotionOracleUNet):
        def forward(self, sample, t, encoder_hidden_states):
            calls.append(int(t))
            return super().forward(sample, t, encoder_hidden_states)

    def sample(snap_start):
        return SamplingOverrides(snap_start=snap_start).apply_sampling(model).generate_chunk(
            context, ["go left"], generator=torch.Generator().manual_seed(0), num_steps=20,
            unet=CountingOracle(model, clean))

    # Below the last step: the chunk is the snapped frames themselves, after one UNet pass at pure noise.
    assert torch.allclose(sample(1), clean, atol=1e-4) and len(calls) == 1
    calls.clear()
    assert torch.allclose(sample(400), clean, atol=1e-3)
    assert calls[0] == 999 and calls[1] <= 400 < max(calls[1:] + [999]) and len(calls) < 20
    # The first estimate is guided as its step is: three passes inside the interval, the text pass alone outside.
    for interval, passes in (({}, 3), ({"guidance_t_max": 500}, 1)):
        recorder = PassRecorder(model, model.text_encoder(["go left"]))
        SamplingOverrides(snap_start=400, image_guidance=2.0, text_guidance=5.0, **interval).apply_sampling(
            model).generate_chunk(context, ["go left"], generator=torch.Generator().manual_seed(0), unet=recorder)
        assert recorder.calls[0] == [(False, False), (True, False), (True, True)][-passes:]
    # A benchmark's override is checked as the checkpoint's setting is.
    for bad in ({"snap_observe": 0}, {"snap_start": 1000}, {"guidance_rescale": 2.0}):
        with pytest.raises(CheckpointError, match=next(iter(bad))):
            SamplingOverrides(**bad).apply_sampling(model)
    # The setting is the checkpoint's, and needs the motion anchor.
    snapping = VideoWorldModel(replace(model.config, snap_start=100), model.unet, model.text_encoder)
    snapping.save_pretrained(tmp_path / "snap", dtype=torch.float32)
    assert VideoWorldModel.from_pretrained(tmp_path / "snap").config.snap_start == 100
    with pytest.raises(CheckpointError, match="snap_start"):
        VideoWorldModel(WorldModelConfig(**TINY, prediction_type="context_residual", snap_start=100))


def test_snap_keep_estimate_snaps_only_the_cells_a_move_explains():
    model = _motion_model(radius=2)
    context, _ = _window(model, batch=1)
    last = context[:, :, -1:]
    # Even frames: a move the estimate shows with small errors, which the snap removes. Odd
    # frames: the unmoved view with a new object in 2x2 cells no translation explains.
    moved = _translated(last, 1, 0)
    appeared = last.clone()
    appeared[..., 1:3, 1:3] += 3
    blur = 0.05 * torch.randn(moved.shape, generator=torch.Generator().manual_seed(1))
    half = model.config.chunk_frames // 2
    clean = torch.cat([moved + blur, appeared] * half, dim=2)
    expected = torch.cat([moved, appeared] * half, dim=2)

    def snapped(keep):
        snapping = SamplingOverrides(snap_start=1, snap_keep_estimate=keep).apply_sampling(model)
        return snapping.generate_chunk(context, ["go left"], generator=torch.Generator().manual_seed(0),
                                       num_steps=20, unet=MotionOracleUNet(model, clean))

    assert torch.allclose(snapped(True), expected, atol=1e-4)
    plain = snapped(False)
    assert torch.allclose(plain[:, :, ::2], moved.expand_as(plain[:, :, ::2]), atol=1e-4)
    assert torch.allclose(plain[:, :, 1::2], last.expand_as(plain[:, :, 1::2]), atol=1e-4)


class MotionOracleUNet(OracleUNet):
    """The exact residual output around the anchor in the sample's last channels."""

    def forward(self, sample, t, encoder_hidden_states):
        fc, c = self.model.config.context_frames, self.model.config.latent_channels
        self.anchor = sample[:, c + 2:, fc:]
        return super().forward(sample, t, encoder_hidden_states)


def test_rollout_keeps_the_context_frame_and_has_the_right_length(tiny_model):
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    calls = []

    class RecordingMemory:
        merged = contextlib.nullcontext

        def update(self, previous, new):
            calls.append((previous.shape, new.shape))

    video = tiny_model.rollout(first, ["go left for 3 steps", "go up for 4 steps"], seed=0, memory=RecordingMemory())
    assert video.shape == (1 + 2 * tiny_model.config.chunk_frames, 64, 64, 3)
    assert np.array_equal(video[0], first)  # the clean context is never altered
    assert calls[0][0][2] == 1 and calls[1][0][2] == tiny_model.config.context_frames


def test_save_load_round_trip_is_identical(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "fp32", dtype=torch.float32)
    loaded = VideoWorldModel.from_pretrained(tmp_path / "fp32")
    context, _ = _window(tiny_model, batch=1)
    a = tiny_model.generate_chunk(context, ["stay"], generator=torch.Generator().manual_seed(3))
    b = loaded.generate_chunk(context, ["stay"], generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    tiny_model.save_pretrained(tmp_path / "fp16")
    half = VideoWorldModel.from_pretrained(tmp_path / "fp16")
    c = half.generate_chunk(context, ["stay"], generator=torch.Generator().manual_seed(3))
    assert ((a - c).abs().mean() / a.abs().mean()) < 0.01
    again = tiny_model.generate_chunk(context, ["stay"], generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, again)  # saving in fp16 leaves the live model untouched
    assert (tmp_path / "fp16" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size < \
        (tmp_path / "fp32" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size * 0.6


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match="slowfast train"):
        VideoWorldModel.from_pretrained(tmp_path / "nothing")
    tiny_model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        VideoWorldModel.from_pretrained(tmp_path / "ckpt")
    # The config alone is read without the UNet (evaluate checks overrides that way before any episode).
    assert WorldModelConfig.from_pretrained(tmp_path / "ckpt") == tiny_model.config
    (tmp_path / "ckpt" / "worldmodel.json").write_text('{"image_size": 64, "latent_factr": 4}')
    with pytest.raises(CheckpointError, match="unreadable.*latent_factr"):
        WorldModelConfig.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "worldmodel.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        VideoWorldModel.from_pretrained(tmp_path / "ckpt")


def _losses(path):
    with open(path) as f:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
    assert len({step for step, _ in rows}) == len(rows), f"a step is logged twice in {path}"
    return dict(rows)


def test_lr_schedule_warms_up_holds_then_decays_to_zero():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, decay_steps=20)
    factors = [lr_factor(cfg, s) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[80] == 1.0
    assert factors[90] == pytest.approx(0.5) and factors[100] == 0.0
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert lr_factor(TrainConfig(max_steps=100, warmup_steps=10), 99) == 1.0
    with pytest.raises(ValueError, match="--decay-steps"):
        TrainConfig(max_steps=100, decay_steps=101)


def test_high_noise_bias_draws_the_top_of_the_schedule_as_often_as_asked():
    assert torch.equal(TrainConfig().timestep_weights(1000), torch.ones(1000))
    weights = TrainConfig(high_noise_portion=0.3, high_noise_weight=3.0).timestep_weights(1000)
    assert weights[:700].eq(1).all() and weights[700:].eq(3).all()
    draws = torch.multinomial(weights, 20_000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert (draws >= 700).float().mean().item() == pytest.approx(0.9 / 1.6, abs=0.01)
    for bad in (dict(high_noise_portion=1.0), dict(high_noise_portion=-0.1), dict(high_noise_weight=0.0)):
        with pytest.raises(ValueError, match="--high-noise"):
            TrainConfig(**bad)


def test_context_noise_corrupts_each_sample_at_its_own_level():
    context = torch.zeros(64, 3, 4, 4, 4)
    assert corrupt_context(TrainConfig(), context, torch.Generator()) is context
    cfg = TrainConfig(context_noise=0.5)
    noisy = corrupt_context(cfg, context, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, corrupt_context(cfg, context, torch.Generator().manual_seed(0)))
    levels = noisy.flatten(1).std(dim=1)
    assert levels.max() < 0.6 and levels.min() < 0.1 and levels.std() > 0.1
    with pytest.raises(ValueError, match="--context-noise"):
        TrainConfig(context_noise=-1)


def test_resume_continues_the_same_loss_curve(cubes_dataset, tmp_path):
    root, _ = cubes_dataset
    common = dict(task="return_cubes", data=str(root), batch_size=2, save_every=2, log_every=1,
                  val_episodes=1, warmup_steps=2, progress=False, block_out_channels=(16, 32),
                  attention_head_dim=2, norm_num_groups=8, context_noise=0.2)
    run_train(TrainConfig(out=str(tmp_path / "straight"), max_steps=5, decay_steps=3, **common))
    run_train(TrainConfig(out=str(tmp_path / "resumed"), max_steps=2, **common))
    with open(tmp_path / "resumed" / "log.csv", "a") as log:  # a step logged after the last checkpoint, then killed
        log.write("3,9.9,,0.0,1.0\n")
    # Resumed with a longer run and a decay added: the schedule the config now describes applies at once.
    run_train(TrainConfig(out=str(tmp_path / "resumed"), max_steps=5, decay_steps=3, resume=True, **common))
    straight, resumed = _losses(tmp_path / "straight" / "log.csv"), _losses(tmp_path / "resumed" / "log.csv")
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    for step in (3, 4, 5):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5)
    saved = yaml.safe_load((tmp_path / "resumed" / "config.yaml").read_text())
    assert (saved["max_steps"], saved["decay_steps"], saved["resume"]) == (5, 3, False)
    model = VideoWorldModel.from_pretrained(tmp_path / "resumed")
    assert model.config.task == "return_cubes"
    with pytest.raises(ValueError, match="--resume"):
        run_train(TrainConfig(out=str(tmp_path / "straight"), max_steps=4, **common))
    # A new run from those weights may change what the UNet predicts; the latent space stays the checkpoint's.
    shipped = json.loads((tmp_path / "straight" / "worldmodel.json").read_text())
    shipped.update(image_guidance=1.0, text_guidance=1.5, temp_lora={"steps": 2})  # settings chosen after training
    (tmp_path / "straight" / "worldmodel.json").write_text(json.dumps(shipped))
    run_train(TrainConfig(out=str(tmp_path / "residual"), max_steps=2, init_from=str(tmp_path / "straight"),
                          prediction_type="context_residual", zero_terminal_snr=True, **common))
    residual = VideoWorldModel.from_pretrained(tmp_path / "residual")
    start = VideoWorldModel.from_pretrained(tmp_path / "straight")
    assert residual.config.prediction_type == "context_residual" and residual.config.residual_std > 0
    assert residual.config.zero_terminal_snr and not start.config.zero_terminal_snr
    assert residual.config.latent_scale == start.config.latent_scale
    # Resumed, such a run keeps what it started from, not a config rebuilt from the data and the defaults.
    run_train(TrainConfig(out=str(tmp_path / "residual"), max_steps=3, init_from=str(tmp_path / "straight"),
                          prediction_type="context_residual", resume=True, **common))
    resumed = VideoWorldModel.from_pretrained(tmp_path / "residual").config
    assert (resumed.image_guidance, resumed.text_guidance, resumed.temp_lora) == (1.0, 1.5, {"steps": 2})


def test_whitened_text_tells_apart_subgoals_the_raw_embeddings_barely_do():
    encoder = TextEncoder()
    left, right = "move the red cube to the left side", "move the red cube to the right side"
    texts = [left, right, "move the blue cube to the front", "put the red cube back where it was", ""]
    raw = torch.nn.functional.normalize(encoder([left, right])[:, 0], dim=-1)
    assert raw[0] @ raw[1] > 0.99
    whitened = WhitenedText(encoder, texts)
    codes = whitened(texts)[:, 0]
    assert codes.shape == (5, encoder.dim)
    assert (codes.norm(dim=-1) ** 2).mean().item() == pytest.approx(1.0, rel=1e-4)
    unit = torch.nn.functional.normalize(codes, dim=-1)
    off_diagonal = (unit @ unit.T)[~torch.eye(5, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.3  # every pair about equally far apart
    assert whitened(["go somewhere new"]).shape == (1, 1, encoder.dim)  # unseen text: projected onto the span
    with pytest.raises(TextEncoderError, match="2 distinct"):
        WhitenedText(encoder, ["", ""])


def test_text_in_the_time_embedding_starts_as_the_model_it_grew_from_and_then_reads_the_text(tiny_model):
    grown = VideoWorldModel(replace(tiny_model.config, text_in_time_embedding=True),
                            with_text_in_time_embedding(tiny_model.unet), tiny_model.text_encoder)
    context, _ = _window(tiny_model, batch=1)
    texts = ["go left for 3 steps", "go right for 3 steps"]

    def sample(model, text):
        return model.generate_chunk(context, [text], generator=torch.Generator().manual_seed(0))

    assert torch.equal(sample(grown, texts[0]), sample(tiny_model, texts[0]))
    torch.nn.init.normal_(grown.unet.time_embedding.cond_proj.weight)
    for layer in grown.unet.modules():  # leave the text no other way in
        if getattr(layer, "is_cross_attention", False):
            torch.nn.init.zeros_(layer.to_out[0].weight)
            torch.nn.init.zeros_(layer.to_out[0].bias)
    assert not torch.equal(sample(grown, texts[0]), sample(grown, texts[1]))


def test_training_with_whitened_text_stores_the_texts_and_reloads_the_same_conditioning(cubes_dataset, tmp_path):
    root, _ = cubes_dataset
    run_train(TrainConfig(task="return_cubes", data=str(root), out=str(tmp_path / "run"), max_steps=1, batch_size=2,
                          val_episodes=1, warmup_steps=1, progress=False, block_out_channels=(16, 32),
                          attention_head_dim=2, norm_num_groups=8, whiten_text=True, text_in_time_embedding=True))
    model = VideoWorldModel.from_pretrained(tmp_path / "run")
    assert model.config.text_in_time_embedding and model.unet.time_embedding.cond_proj is not None
    data = load_dataset(root)
    train_texts = {s["text"] for e in range(len(data) - 1) for s in data.episodes[e]["subgoals"]}
    assert model.config.text_whitening == sorted(train_texts | {""})
    assert isinstance(model.embed, WhitenedText)
    texts = model.config.text_whitening
    again = VideoWorldModel.from_pretrained(tmp_path / "run")
    torch.testing.assert_close(again.embed(texts), model.embed(texts), rtol=0, atol=0)
    context = torch.zeros(1, model.config.latent_channels, 1, model.config.latent_size, model.config.latent_size)
    chunks = [model.generate_chunk(context, [t], generator=torch.Generator().manual_seed(0)) for t in texts[1:3]]
    assert not torch.equal(*chunks)  # the conditioning reaches the samples


def test_zero_terminal_snr_leaves_no_trace_of_the_target_at_the_last_step_and_still_samples(tiny_model):
    config = replace(tiny_model.config, prediction_type="context_residual", zero_terminal_snr=True)
    model = VideoWorldModel(config, copy.deepcopy(tiny_model.unet), tiny_model.text_encoder)
    context, target = _window(model, batch=1)
    noise = torch.randn(target.shape)
    last = torch.tensor([model.config.num_train_timesteps - 1])
    assert torch.equal(model.train_scheduler.add_noise(target, noise, last), noise)
    plain = tiny_model.train_scheduler.add_noise(target, noise, last)
    assert not torch.equal(plain, noise)  # the linear schedule's leak this option removes
    chunk = model.generate_chunk(context, ["go left for 3 steps"], generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(chunk).all()
    with pytest.raises(CheckpointError, match="zero_terminal_snr"):
        VideoWorldModel(replace(config, prediction_type="epsilon"), tiny_model.unet, tiny_model.text_encoder)


def test_training_loss_at_given_timesteps_uses_them(tiny_model):
    context, target = _window(tiny_model, batch=1)
    text, length = tiny_model.embed(["go left for 3 steps"]), torch.tensor([4])

    def loss(t):
        return tiny_model.training_loss(context, length, target, text, torch.Generator().manual_seed(3),
                                        timesteps=torch.tensor([t])).item()

    assert loss(999) == loss(999) != loss(10)
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(3))
    noisy = tiny_model.train_scheduler.add_noise(target, noise, torch.tensor([10]))
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(
            tiny_model.predict(context, length, noisy, torch.tensor([10]), text),
            tiny_model.regression_target(target, noise, torch.tensor([10]), anchor=context[:, :, -1:]))
    assert loss(10) == pytest.approx(expected.item(), rel=1e-6)


def test_branch_portion_sets_the_share_of_counterfactual_chunks_drawn(tmp_path, cubes_dataset):
    from envs.collect import collect
    from envs.dataset import ChunkDataset
    from worldmodel.train import chunk_weights
    collect("retrace", tmp_path / "data", episodes=1, seed=0, progress=False, branches=True)
    chunks = ChunkDataset(tmp_path / "data")
    branch = torch.tensor([chunks.data.episodes[e].get("branch_of") is not None for e, _ in chunks.index])
    assert chunk_weights(TrainConfig(data=str(tmp_path / "data")), chunks) is None
    weights = chunk_weights(TrainConfig(data=str(tmp_path / "data"), branch_portion=0.8), chunks)
    assert (weights[branch].sum() / weights.sum()).item() == pytest.approx(0.8)
    draws = torch.multinomial(weights, 20_000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert branch[draws].float().mean().item() == pytest.approx(0.8, abs=0.01)
    with pytest.raises(ValueError, match="slowfast collect --branches"):
        chunk_weights(TrainConfig(branch_portion=0.5), ChunkDataset(cubes_dataset[0]))
    with pytest.raises(ValueError, match="--branch-portion"):
        TrainConfig(branch_portion=1.0)
    run_train(TrainConfig(task="retrace", data=str(tmp_path / "data"), out=str(tmp_path / "run"), max_steps=2,
                          batch_size=2, val_episodes=1, progress=False, branch_portion=0.5,
                          block_out_channels=(16, 32), attention_head_dim=2, norm_num_groups=8))
    assert VideoWorldModel.from_pretrained(tmp_path / "run").config.task == "retrace"
