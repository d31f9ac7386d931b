"""Masked conditional video diffusion (paper Sec. 3.1.1, 3.2 "Generation").

The UNet sees ``context_frames`` clean context slots followed by ``chunk_frames``
noised frames on the frame axis. Two extra input channels say, per frame, whether a
slot holds a clean context frame (mask) and where the frame sits in the window
(position), so any f_p from 0 to ``context_frames`` works: empty slots are zeros with
mask 0. f_p = 0 is the "no image" condition of three-way classifier-free guidance.
Only the noised frames count in the loss and only they are updated while sampling;
the clean context is re-inserted unchanged at every step.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet3DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from worldmodel.deep_cache import DeepFeatureCache
from worldmodel.latent import SpaceToDepth
from worldmodel.text import ENCODERS, TextEncoder, WhitenedText

CONFIG_NAME = "worldmodel.json"
PREDICTION_TYPES = ("v_prediction", "epsilon", "context_residual")
SAMPLERS = {"dpmsolver++": DPMSolverMultistepScheduler, "ddim": DDIMScheduler}


class CheckpointError(ValueError):
    pass


@dataclass
class WorldModelConfig:
    image_size: int = 64
    # Pixels per latent cell side (`SpaceToDepth`): 4 gives 16x16 cells of 48 values; 7 gives
    # retrace 10x10 cells, one Crafter tile each, so the view's one-tile scroll is a one-cell shift.
    latent_factor: int = 4
    latent_shift: float = 0.0
    latent_scale: float = 1.0
    context_frames: int = 4
    chunk_frames: int = 8
    block_out_channels: tuple[int, ...] = (48, 96)
    down_block_types: tuple[str, ...] = ("DownBlock3D", "CrossAttnDownBlock3D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock3D", "UpBlock3D")
    layers_per_block: int = 1
    attention_head_dim: int = 4
    norm_num_groups: int = 16
    text_encoder: str = "all-MiniLM-L6-v2"
    # The texts the text embeddings are whitened over (`WhitenedText`; `slowfast train
    # --whiten-text` puts the training data's subgoal texts and "" here); empty: raw embeddings.
    text_whitening: list[str] = field(default_factory=list)
    # Also add the text embedding to the noise-level embedding (diffusers' `time_cond_proj_dim`),
    # which every ResNet block of every resolution and frame receives, as DIAMOND conditions
    # on actions; otherwise the text reaches the UNet only through the cross-attention layers.
    text_in_time_embedding: bool = False
    num_train_timesteps: int = 1000
    # Rescale the DDPM betas so the last timestep holds no signal at all (Lin et al. 2024,
    # diffusers' `rescale_betas_zero_snr`). The linear schedule keeps sqrt(alpha_bar) = 0.006
    # of the target at t = 999: summed over a whole 8-frame chunk that is enough to see which
    # way the view scrolls, so training can do without the subgoal text there, while sampling
    # starts from pure noise (on its own it did not make the retrace model read the text:
    # checkpoints/README.md, "Session 13").
    zero_terminal_snr: bool = False
    sample_steps: int = 20
    # "dpmsolver++" (multistep, `solver_order`) or "ddim"; both measured in checkpoints/README.md.
    sampler: str = "dpmsolver++"
    solver_order: int = 2
    image_guidance: float = 2.0
    text_guidance: float = 5.0
    # Lin et al. 2024 (Sec. 3.4) rescale of the guided output towards the text pass's standard
    # deviation, mixed in by this factor in [0, 1] (0 = plain CFG): strong guidance overshoots,
    # which on retrace shows as pixels changing where nothing moves (measured: docs/results/README.md).
    guidance_rescale: float = 0.0
    # Guidance only on the sampling steps with guidance_t_min <= t <= guidance_t_max; the others
    # take the most-conditioned pass alone, one UNet pass instead of two or three (Kynkaanniemi
    # et al. 2024 guide in a limited interval of noise levels). The defaults guide every step.
    guidance_t_min: int = 0
    guidance_t_max: int = 1000
    # Sampling runs the UNet's deep, low-resolution blocks on one call in this many and reuses
    # their features on the others (`DeepFeatureCache`); 1 runs every call in full.
    deep_cache_interval: int = 1
    # Cells (one latent position, latent_factor^2 pixels) of a generated frame whose every pixel
    # lies within this many grey levels of the last context frame are set to that frame's cell
    # exactly, as a video codec skips unchanged blocks: what the sampler leaves there is noise of
    # ~5 grey levels (docs/results/README.md), while a moving arm or a scrolled tile changes pixels by
    # far more. 0 keeps the sampled latents as they are.
    static_tolerance: float = 0.0
    # What the UNet predicts. "v_prediction" (v = alpha eps - sigma x0): with
    # unit-variance latents the x0 estimate is alpha x_t - sigma v, so UNet errors are
    # never amplified. "epsilon" must copy i.i.d. noise through the UNet's narrowest,
    # SiLU-gated layer (48 channels for 48 latent channels), which it learns very slowly
    # (checkpoints/README.md), and x0 = (x_t - sigma eps) / alpha amplifies what it
    # gets wrong ~100x at t ~ T.
    # "context_residual" preconditions the denoiser around the last clean context frame
    # mu, the "repeat the last frame" guess: x0 = mu + c_skip (x_t - alpha mu) + c_out F
    # (EDM's preconditioning with prior mean mu). Most pixels of a chunk equal mu, and a
    # small `residual_skip_sigma` makes F = 0 reproduce them, where v-prediction must
    # cancel the noise in x_t pixel by pixel; the v models leave 13-29 % of it in their
    # x0 estimates at t = 50-400 (checkpoints/README.md). c_out scales F's target to unit
    # variance given the data's residual std (`residual_std`, measured by `slowfast train`).
    prediction_type: str = "v_prediction"
    residual_skip_sigma: float = 0.1
    residual_std: float = 1.0
    # Motion-compensated anchor for "context_residual" (0 = off): mu is, cell by cell, the
    # posterior mean of the last context frame's translations by up to R cells, as a video codec
    # predicts each block from a displaced reference (`VideoWorldModel.anchor`): the unmoved frame
    # at high noise, the move x_t shows once it commits to one. The UNet is given mu as extra
    # input channels, so its F completes the anchor it is measured against (when the view
    # scrolls, as in retrace's top-down map, only the uncovered strip). Session 42's form, a
    # UNet-predicted prior and mu not shown to the UNet, was worse than the unmoved anchor.
    motion_radius: int = 0
    # Start sampling from the motion-compensated frame the model itself points at (0 = off;
    # needs motion_radius): one guided pass at pure noise gives an x0 estimate, the anchor reads
    # which translation of the last frame each block of it shows (the estimate taken as x_t at
    # noise level `snap_observe`), and the sampler resumes from that frame noised to the first
    # step at or below timestep `snap_start`, as SDEdit resumes from a guide image. Measured on
    # retrace (docs/results/worldmodel_snap_s45/): sharper chunks, 5x faster, but it no longer
    # follows the text where the context shows no motion yet; nor when the motion is read off a
    # later step's estimate (session 46: the estimate follows the text, the snapped frame does not).
    snap_start: int = 0
    snap_observe: int = 300
    # Snap only the cells the move explains: a cell takes the snapped frame where that is nearer
    # the estimate (squared error over the cell's channels) than the unmoved frame is, else the
    # estimate itself, which keeps what the text changes and no translation shows. Measured on
    # retrace (docs/results/worldmodel_snap_keep_s47/): text following back from 0.30 to 0.52-0.65.
    snap_keep_estimate: bool = False
    # Dynamic thresholding of DPM-Solver's x0 estimates (Imagen); it rescales x0 into
    # [-1, 1], so it only suits latents in that range.
    thresholding: bool = False
    task: str = ""
    # The Temp-LoRA settings (MemoryConfig fields) to use with this model: those a slow-fast
    # finetuned base learned to read, or those chosen by measurement for a slow-learned one
    # (checkpoints/README.md). Planning and the benchmarks use them unless told otherwise;
    # empty: MemoryConfig's defaults.
    temp_lora: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def latent_channels(self) -> int:
        return 3 * self.latent_factor**2

    @property
    def latent_size(self) -> int:
        return math.ceil(self.image_size / self.latent_factor)

    @property
    def latent_multiple(self) -> int:
        """What a latent side (or a crop of it) must be a multiple of: the UNet halves it once per extra level."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def window(self) -> int:
        return self.context_frames + self.chunk_frames

    @property
    def unet_in_channels(self) -> int:
        """Noised/clean latents, the clean-context flag and the frame position, then the anchor if
        motion-compensated."""
        return self.latent_channels * (2 if self.motion_radius else 1) + 2

    def check(self) -> None:
        """Raise CheckpointError for settings no model can be built or sampled with."""
        if self.latent_factor < 1:
            raise CheckpointError(f"latent_factor must be >= 1 (pixels per latent cell side), "
                                  f"got {self.latent_factor}")
        if self.latent_size % self.latent_multiple:
            raise CheckpointError(f"a {len(self.block_out_channels)}-level UNet needs a latent side that is a "
                                  f"multiple of {self.latent_multiple}: image_size {self.image_size} / "
                                  f"latent_factor {self.latent_factor} gives {self.latent_size} (rounded up); "
                                  "choose another latent_factor or fewer block_out_channels")
        if self.prediction_type not in PREDICTION_TYPES:
            raise CheckpointError(f"prediction_type {self.prediction_type!r} is not one of {PREDICTION_TYPES}")
        if self.motion_radius < 0 or (self.motion_radius and self.prediction_type != "context_residual"):
            raise CheckpointError(f"motion_radius {self.motion_radius}: the motion-compensated anchor needs "
                                  "prediction_type context_residual and a radius >= 1 (0 = off)")
        if self.zero_terminal_snr and self.prediction_type == "epsilon":
            raise CheckpointError("zero_terminal_snr needs prediction_type v_prediction or context_residual: "
                                  "an epsilon model's x0 estimate divides by sqrt(alpha_bar), 0 at the last step")
        if self.sampler not in SAMPLERS:
            raise CheckpointError(f"sampler {self.sampler!r} is not one of {tuple(SAMPLERS)}")
        if not 0 <= self.snap_start < self.num_train_timesteps or (self.snap_start and not self.motion_radius):
            raise CheckpointError(f"snap_start {self.snap_start}: starting from the motion-compensated frame needs "
                                  f"motion_radius >= 1 and a timestep in [1, {self.num_train_timesteps}) (0 = off)")
        if not 0 < self.snap_observe < self.num_train_timesteps:
            raise CheckpointError(f"snap_observe {self.snap_observe} is not a timestep in "
                                  f"[1, {self.num_train_timesteps})")
        if self.static_tolerance < 0:
            raise CheckpointError(f"static_tolerance {self.static_tolerance} is negative: give grey levels "
                                  "(0 keeps sampled cells as they are)")
        if not 0 <= self.guidance_rescale <= 1:
            raise CheckpointError(f"guidance_rescale {self.guidance_rescale} is not in [0, 1] (0 = plain CFG)")
        if not 0 <= self.guidance_t_min <= self.guidance_t_max:
            raise CheckpointError(f"guidance interval [{self.guidance_t_min}, {self.guidance_t_max}] is not "
                                  f"0 <= guidance_t_min <= guidance_t_max (timesteps; [0, "
                                  f"{self.num_train_timesteps}] guides every step)")
        if self.deep_cache_interval < 1:
            raise CheckpointError(f"deep_cache_interval {self.deep_cache_interval} is not >= 1 (UNet calls per "
                                  "full call of the deep blocks; 1 = every call in full)")
        if self.guidance_rescale and self.text_guidance == 0:
            raise CheckpointError("guidance_rescale scales towards the text pass, which text_guidance 0 leaves out: "
                                  "set guidance_rescale 0 or a nonzero text_guidance")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "WorldModelConfig":
        """The ``worldmodel.json`` of the checkpoint folder ``path`` (not checked: see ``check``)."""
        config_file = Path(path) / CONFIG_NAME
        if not config_file.is_file():
            raise CheckpointError(f"no world model at {path} (missing {CONFIG_NAME}); train one with "
                                  "`slowfast train --task TASK --data DIR --out DIR`")
        try:
            values = json.loads(config_file.read_text())
            tuples = {key: tuple(values[key]) for key in ("block_out_channels", "down_block_types", "up_block_types")
                      if key in values}
            return cls(**{**values, **tuples})
        except Exception as error:  # corrupt JSON or unknown keys: one clear message
            raise CheckpointError(f"world model checkpoint at {path} is unreadable: {error}; "
                                  "retrain it or restore the folder") from None


def _sampling_option(help_text: str):
    """An optional setting whose unset value keeps the checkpoint's."""
    return field(default=None, metadata={"group": "sampling", "help": help_text,
                                         "default_text": "the checkpoint's worldmodel.json value"})


@dataclass
class SamplingOverrides:
    """The sampling settings a job (plan, evaluate, generate) or a benchmark may override on the command
    line; None keeps the checkpoint's."""
    image_guidance: float | None = _sampling_option("image guidance scale g_i")
    text_guidance: float | None = _sampling_option("text guidance scale g_t")
    guidance_rescale: float | None = _sampling_option("guidance rescale factor phi in [0, 1], 0 = plain CFG")
    guidance_t_min: int | None = _sampling_option(
        "lowest timestep that is guided (the others run the most-conditioned pass alone)")
    guidance_t_max: int | None = _sampling_option("highest timestep that is guided")
    deep_cache_interval: int | None = _sampling_option(
        "UNet calls per full call of the deep blocks, the others reuse their features (1 = off)")
    static_tolerance: float | None = _sampling_option(
        "grey levels within which a cell keeps the last context frame's, 0 = off")
    snap_start: int | None = _sampling_option("timestep the sampler resumes at from the snapped frame, 0 = off")
    snap_observe: int | None = _sampling_option("noise level the first estimate is read at when picking the motion")
    snap_keep_estimate: bool | None = _sampling_option(
        "snap only the cells the move explains better than the unmoved frame")

    def sampling_options(self) -> dict:
        """These fields by name (a job's config holds more), to hand on to another job's config."""
        return {f.name: getattr(self, f.name) for f in fields(SamplingOverrides)}

    @staticmethod
    def settings_of(model: "VideoWorldModel") -> dict:
        """The values ``model`` samples with for every setting listed here (a record of what ran)."""
        return {f.name: getattr(model.config, f.name) for f in fields(SamplingOverrides)}

    def sampling_config(self, config: WorldModelConfig) -> WorldModelConfig:
        """``config`` with the given values (unchecked: see ``WorldModelConfig.check``)."""
        return replace(config, **{name: value for name, value in self.sampling_options().items() if value is not None})

    def apply_sampling(self, model: "VideoWorldModel") -> "VideoWorldModel":
        """``model`` (same UNet and text encoder) with the given values, checked as a checkpoint's are."""
        config = self.sampling_config(model.config)
        return model if config == model.config else VideoWorldModel(config, model.unet, model.text_encoder)


class FrameAxisConv3d(torch.nn.Conv3d):
    """A Conv3d whose kernel spans frames only, (k, 1, 1), run as a Conv2d over (frames, pixels).

    PyTorch's CPU Conv3d sends these layers (diffusers' temporal convolutions) to its slow
    reference kernel; the same arithmetic as a 2-D convolution runs in oneDNN, up to 4x
    faster here (README, Models). Same parameters, same state dict."""

    @staticmethod
    def fits(conv: torch.nn.Module) -> bool:
        return (type(conv) is torch.nn.Conv3d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
                and all(tuple(getattr(conv, a)[1:]) == v for a, v in (("kernel_size", (1, 1)), ("stride", (1, 1)),
                                                                     ("padding", (0, 0)), ("dilation", (1, 1)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        out = F.conv2d(x.reshape(b, c, f, h * w), self.weight.squeeze(-1), self.bias, stride=(self.stride[0], 1),
                       padding=(self.padding[0], 0), dilation=(self.dilation[0], 1), groups=self.groups)
        return out.view(b, out.shape[1], out.shape[2], h, w)


def use_frame_axis_convs(unet: torch.nn.Module) -> None:
    """Switches the UNet's frame-only Conv3d layers to ``FrameAxisConv3d`` in place."""
    for conv in [m for m in unet.modules() if FrameAxisConv3d.fits(m)]:
        conv.__class__ = FrameAxisConv3d  # adds no state: the layer keeps its parameters and hooks


class SingleKeyAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor, except that attention over a single key returns that key's value.

    The text condition is one embedding, so every cross-attention layer attends to one key:
    the softmax of one score is exactly 1, and the output is ``to_out(to_v(text))`` for every
    query, with no query projection and no attention kernel (2 % of a chunk, bit-identical
    outputs; README, Models). Any other call is diffusers' processor."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        single_key = (encoder_hidden_states is not None and encoder_hidden_states.shape[1] == 1
                      and attention_mask is None and hidden_states.ndim == 3 and attn.spatial_norm is None
                      and attn.group_norm is None and not (attn.training and attn.to_out[1].p > 0))
        if not single_key:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        out = attn.to_out[1](attn.to_out[0](attn.to_v(encoder_hidden_states))).expand_as(hidden_states)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def build_unet(config: WorldModelConfig) -> UNet3DConditionModel:
    return UNet3DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.unet_in_channels,
        out_channels=config.latent_channels,
        down_block_types=tuple(config.down_block_types),
        up_block_types=tuple(config.up_block_types),
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        cross_attention_dim=ENCODERS[config.text_encoder],
        attention_head_dim=config.attention_head_dim,
        time_cond_proj_dim=ENCODERS[config.text_encoder] if config.text_in_time_embedding else None,
    )


def with_text_in_time_embedding(unet: UNet3DConditionModel) -> UNet3DConditionModel:
    """A copy of ``unet`` whose noise-level embedding also takes the text, through a new
    projection initialised to zero, so the copy predicts exactly what ``unet`` does."""
    config = dict(unet.config)
    config["time_cond_proj_dim"] = unet.config.cross_attention_dim
    grown = UNet3DConditionModel.from_config(config)
    missing, unexpected = grown.load_state_dict(unet.state_dict(), strict=False)
    assert missing == ["time_embedding.cond_proj.weight"] and not unexpected, (missing, unexpected)
    torch.nn.init.zeros_(grown.time_embedding.cond_proj.weight)
    return grown


# The untranslated frame's prior logit against 0 for every other translation: the anchor
# stays the unmoved frame until the noised frame's likelihood favours a move by more than this
# (at pure noise the unmoved frame weighs 1 - 3e-5 against 288 translations at radius 8).
STILL_LOGIT = 16.0
# The side, in cells, of the block whose likelihood decides a cell's translation. Measured on
# retrace's 32 held-out bench chunks noised to t = 600 / 300 (latent RMSE of the anchor to the
# true frames; the unmoved frame 0.68): 0.66 / 0.25 for single cells, 0.44 / 0.34 for 3,
# 0.45 / 0.42 for 5, 0.60 / 0.60 for one translation per frame
# (docs/results/worldmodel_motion_input_s43/anchor_probe.py).
MOTION_BLOCK = 3


def with_motion_input(unet: UNet3DConditionModel, config: "WorldModelConfig") -> UNet3DConditionModel:
    """``unet`` taking the anchor as ``config.latent_channels`` more input channels, through
    zero weights, so it predicts exactly what ``unet`` does until it learns to read them."""
    grown_config = dict(unet.config)
    grown_config["in_channels"] = config.unet_in_channels
    grown = UNet3DConditionModel.from_config(grown_config)
    state = unet.state_dict()
    kept = {k: v for k, v in state.items() if k != "conv_in.weight"}
    missing, unexpected = grown.load_state_dict(kept, strict=False)
    assert missing == ["conv_in.weight"] and not unexpected, (missing, unexpected)
    with torch.no_grad():
        grown.conv_in.weight.zero_()
        grown.conv_in.weight[:, :unet.config.in_channels] = state["conv_in.weight"]
    return grown


class VideoWorldModel:
    """UNet + schedulers + latent space + text encoder, saved and loaded as one folder."""

    def __init__(self, config: WorldModelConfig, unet: UNet3DConditionModel | None = None,
                 text_encoder: TextEncoder | None = None):
        config.check()
        self.config = config
        self.unet = unet if unet is not None else build_unet(config)
        use_frame_axis_convs(self.unet)
        self.unet.set_attn_processor(SingleKeyAttnProcessor())
        channels = (self.unet.config.in_channels, self.unet.config.out_channels)
        if channels != (config.unet_in_channels, config.latent_channels):
            raise CheckpointError(f"the UNet has {channels[0]} input and {channels[1]} output channels, the config "
                                  f"asks for {config.unet_in_channels} (latent {config.latent_channels}, 2 flags"
                                  f"{', the motion anchor' if config.motion_radius else ''}) and "
                                  f"{config.latent_channels}; the checkpoint's worldmodel.json and unet/ disagree")
        self.latent = SpaceToDepth(config.latent_factor, config.latent_scale, config.latent_shift, config.image_size)
        self.text_encoder = text_encoder or TextEncoder(config.text_encoder)
        # What the UNet is conditioned on: (B,) texts -> (B, 1, dim).
        self.embed = (WhitenedText(self.text_encoder, config.text_whitening) if config.text_whitening
                      else self.text_encoder)
        # The residual denoiser's output is turned into an x0 estimate before the sampler sees it.
        scheduler_prediction = "sample" if config.prediction_type == "context_residual" else config.prediction_type
        self.train_scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                                             prediction_type=scheduler_prediction,
                                             rescale_betas_zero_snr=config.zero_terminal_snr)
        # DDIM's default "leading" spacing would start sampling at t = 950, not at pure noise.
        schedule = {"solver_order": config.solver_order} if config.sampler == "dpmsolver++" else {
            "timestep_spacing": "trailing"}
        self.sampler = SAMPLERS[config.sampler].from_config(
            self.train_scheduler.config, thresholding=config.thresholding,
            sample_max_value=float(config.latent_scale), **schedule)

    # --- inputs -------------------------------------------------------------------------
    def empty_text(self, batch: int) -> torch.Tensor:
        return self.embed([""] * batch)

    @staticmethod
    def unet_input(frames: torch.Tensor, clean: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, F, h, w) frames + (B, F) clean-context flags -> UNet input with mask and position,
        then, for a motion-compensated model, each frame's anchor (B, C, F, h, w)."""
        b, _, f, h, w = frames.shape
        position = torch.linspace(-1, 1, f, device=frames.device).expand(b, -1)
        extra = torch.stack([clean.float(), position], dim=1)[..., None, None].expand(-1, -1, -1, h, w)
        return torch.cat([frames, extra] + ([] if anchor is None else [anchor]), dim=1)

    def window_input(self, context: torch.Tensor, context_len: torch.Tensor,
                     noisy: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
        """Clean context slots + noised frames + mask and position channels (+ the noised frames' anchor).

        ``context`` (B, C, context_frames, h, w) holds real frames right-aligned:
        slots before ``context_frames - context_len`` are emptied. Context slots have no anchor (zeros).
        """
        b, _, fc = context.shape[:3]
        slot = torch.arange(fc, device=context.device)
        valid = (slot[None, :] >= fc - context_len.to(context.device)[:, None]).float()  # (B, fc)
        frames = torch.cat([context * valid[:, :, None, None][:, None], noisy], dim=2)
        clean = torch.cat([valid, torch.zeros(b, noisy.shape[2], device=context.device)], dim=1)
        anchor_slots = torch.cat([torch.zeros_like(context), anchor], dim=2) if self.config.motion_radius else None
        return self.unet_input(frames, clean, anchor_slots)

    def denoise(self, unet, sample: torch.Tensor, timesteps, text_embeddings: torch.Tensor) -> torch.Tensor:
        """One UNet call; the text goes to cross-attention and, if configured, to the noise-level embedding."""
        extra = {"timestep_cond": text_embeddings[:, 0]} if self.config.text_in_time_embedding else {}
        return unet(sample, timesteps, encoder_hidden_states=text_embeddings, **extra).sample

    def predict(self, context, context_len, noisy, timesteps, text_embeddings,
                anchor: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's prediction (``config.prediction_type``) for the noised frames only;
        ``anchor``: their ``anchor(...)`` if already computed."""
        if anchor is None and self.config.motion_radius:
            anchor = self.anchor(context[:, :, -1:], noisy, timesteps)
        sample = self.window_input(context, context_len, noisy, anchor)
        out = self.denoise(self.unet, sample, timesteps, text_embeddings)
        return out[:, :, context.shape[2]:]

    # --- the anchor mu of "context_residual" ----------------------------------------------
    @torch.no_grad()
    def anchor(self, last: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor,
               translations: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The anchor of the frames ``noisy`` (B, C, F, h, w) at ``t``: ``last`` (B, C, 1, h, w), the
        newest clean frame, or with ``motion_radius`` the posterior mean of its translations, cell by cell.

        For each cell, translation s_k has the prior logit ``STILL_LOGIT`` if it is the unmoved frame,
        else 0, plus the Gaussian log-likelihood -|x_t - alpha s_k|^2 / (2 sigma^2) summed over the
        ``MOTION_BLOCK`` x ``MOTION_BLOCK`` cells around it (a codec's block motion vector): at pure
        noise the anchor is ``last``; as the frame commits to a move, that move. Per block, not per
        frame, because parts of a view stay put while the rest scrolls (retrace's player in the centre).
        ``translations``: ``translations(last)`` if already computed (sampling does so once a chunk)."""
        if not self.config.motion_radius:
            return last
        b, c, f, h, w = noisy.shape
        padded, source = translations if translations is not None else self.translations(last)
        k = source.shape[1]
        source = source.repeat(f, 1).expand(b, -1, -1)  # (B, F * h * w, K): the padded cell each reads
        alpha, sigma = (v.view(-1, 1, 1) for v in self._alpha_sigma(t))
        # Every noised cell against every cell of the padded frame in one matrix product, then
        # the K pairs each translation makes: far cheaper than materialising the K translations.
        frames = noisy.flatten(2).transpose(1, 2)  # (B, F * h * w, C)
        cross = torch.bmm(frames, padded).gather(2, source)
        energy = padded.square().sum(dim=1)[:, None].expand(-1, source.shape[1], -1).gather(2, source)
        logits = ((alpha * cross - 0.5 * alpha**2 * energy) / sigma**2).view(b, f, h, w, k)
        block = F.avg_pool2d(logits.permute(0, 1, 4, 2, 3).reshape(b, f * k, h, w), MOTION_BLOCK, stride=1,
                             padding=MOTION_BLOCK // 2) * MOTION_BLOCK**2
        logits = block.view(b, f, k, h, w).permute(0, 1, 3, 4, 2).reshape(b, f * h * w, k)
        logits[..., k // 2] += STILL_LOGIT
        weights = torch.zeros(b, f * h * w, padded.shape[2]).scatter_(2, source, logits.softmax(dim=2))
        return torch.bmm(weights, padded.transpose(1, 2)).transpose(1, 2).reshape(b, c, f, h, w)

    def translations(self, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, 1, h, w) frame -> the frame padded by ``motion_radius`` cells of its mean colour,
        flattened, (B, C, (h + 2R) (w + 2R)), and for each cell and translation k the padded cell it
        reads, (h * w, (2R + 1)^2), the untranslated one at k = K // 2. Cells moved in from beyond the
        frame thus take its mean per channel."""
        b, c, _, h, w = last.shape
        r = self.config.motion_radius
        mean = last.mean(dim=(-2, -1), keepdim=True)
        padded = F.pad(last[:, :, 0] - mean[:, :, 0], (r, r, r, r)) + mean[:, :, 0]
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        dy, dx = torch.meshgrid(torch.arange(2 * r + 1), torch.arange(2 * r + 1), indexing="ij")
        source = (rows.reshape(-1, 1) + dy.reshape(1, -1)) * (w + 2 * r) + cols.reshape(-1, 1) + dx.reshape(1, -1)
        return padded.flatten(2), source

    def _alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_bar = self.train_scheduler.alphas_cumprod[torch.as_tensor(t).long().reshape(-1)]
        return alpha_bar.sqrt().view(-1, 1, 1, 1, 1), (1 - alpha_bar).sqrt().view(-1, 1, 1, 1, 1)

    def _residual_coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha, sigma = self._alpha_sigma(t)
        d2, r = self.config.residual_skip_sigma ** 2, self.config.residual_std
        c_skip = alpha * d2 / (alpha**2 * d2 + sigma**2)
        c_out = ((1 - c_skip * alpha) ** 2 * r**2 + c_skip**2 * sigma**2).sqrt()
        return alpha, c_skip, c_out

    def residual_x0(self, noisy: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor,
                    anchor: torch.Tensor) -> torch.Tensor:
        """The x0 estimate of a "context_residual" denoiser output around ``anchor`` (mu)."""
        alpha, c_skip, c_out = self._residual_coefficients(t)
        return anchor + c_skip * (noisy - alpha * anchor) + c_out * prediction

    def regression_target(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                          anchor: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.prediction_type == "epsilon":
            return noise
        if self.config.prediction_type == "v_prediction":
            return self.train_scheduler.get_velocity(clean, noise, t)
        alpha, c_skip, c_out = self._residual_coefficients(t)
        noisy = self.train_scheduler.add_noise(clean, noise, t)
        return (clean - anchor - c_skip * (noisy - alpha * anchor)) / c_out

    # --- training (Eq. 2) ---------------------------------------------------------------
    def training_loss(self, context, context_len, target, text_embeddings, generator: torch.Generator | None = None,
                      timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """The masked denoising loss at random timesteps, or at ``timesteps`` if given."""
        noise = torch.randn(target.shape, generator=generator)
        t = timesteps if timesteps is not None else torch.randint(0, self.config.num_train_timesteps,
                                                                  (target.shape[0],), generator=generator)
        noisy = self.train_scheduler.add_noise(target, noise, t)
        # The anchor comes from the newest real frame even when condition dropout hides the
        # context from the UNet, so all three guidance branches share one preconditioning.
        anchor = self.anchor(context[:, :, -1:], noisy, t)
        predicted = self.predict(context, context_len, noisy, t, text_embeddings, anchor)
        return F.mse_loss(predicted, self.regression_target(target, noise, t, anchor=anchor))

    def whole_window_loss(self, frames: torch.Tensor, text_embeddings: torch.Tensor,
                          generator: torch.Generator | None = None) -> torch.Tensor:
        """Eq. 3: every frame of the window noised at one random t, none clean, loss on all.

        A "context_residual" model is anchored on the window's first frame here: the UNet
        never sees it clean, it only enters the preconditioning."""
        noise = torch.randn(frames.shape, generator=generator)
        t = torch.randint(0, self.config.num_train_timesteps, (frames.shape[0],), generator=generator)
        noisy = self.train_scheduler.add_noise(frames, noise, t)
        clean = torch.zeros(frames.shape[0], frames.shape[2])
        anchor = self.anchor(frames[:, :, :1], noisy, t)
        sample = self.unet_input(noisy, clean, anchor if self.config.motion_radius else None)
        predicted = self.denoise(self.unet, sample, t, text_embeddings)
        return F.mse_loss(predicted, self.regression_target(frames, noise, t, anchor=anchor))

    def context_slots(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The newest ``context_frames`` of ``context`` right-aligned in the window's context
        slots (empty slots zero), and how many of them hold real frames, per batch row."""
        fc = self.config.context_frames
        context = context[:, :, -fc:]
        real = context.shape[2]
        if real < fc:
            context = torch.cat([context.new_zeros(*context.shape[:2], fc - real, *context.shape[3:]), context], dim=2)
        return context, torch.full((context.shape[0],), real, dtype=torch.long)

    # --- sampling -------------------------------------------------------------------------
    @torch.no_grad()
    def generate_chunk(self, context: torch.Tensor, texts: list[str], context_len: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, num_steps: int | None = None,
                       unet=None) -> torch.Tensor:
        """Next ``chunk_frames`` latents after ``context`` (B, C, f_p, h, w), f_p <= context_frames.

        Three-way CFG (App. C.1): eps = u + g_i (img - u) + g_t (text - img), applied to
        the UNet's output (eps, v or the residual output F: all affine in the score at a
        given x_t), with the passes (no image + no text, image + no text, image + text)
        in one batch. Written as (1 - g_i) u + (g_i - g_t) img + g_t text, a pass whose
        weight is zero is skipped: g_i = 1 needs no unconditional pass, g_i = g_t = 1
        only the text pass. Steps outside [``guidance_t_min``, ``guidance_t_max``] run only
        the last (most-conditioned) pass, unguided (so does the first estimate ``snap_start`` reads,
        taken at the first step). ``guidance_rescale`` (phi) then moves the
        guided output towards the text pass's per-sample standard deviation:
        phi * g * std(text) / std(g) + (1 - phi) * g.
        ``static_tolerance`` (grey levels) copies the last context frame's cells that the
        sampled frames leave within it (``WorldModelConfig.static_tolerance``). All these settings
        are the config's; ``SamplingOverrides`` gives a model with others. ``deep_cache_interval`` > 1
        reuses the UNet's deep features between steps (``DeepFeatureCache``).
        """
        cfg = self.config
        unet = unet or self.unet
        context, real_frames = self.context_slots(context)
        context_len = real_frames if context_len is None else context_len
        b, c, _, h, w = context.shape
        g_i, g_t, rescale = cfg.image_guidance, cfg.text_guidance, cfg.guidance_rescale
        text = self.embed(texts)
        empty = self.empty_text(b)
        passes = [(1 - g_i, torch.zeros_like(context_len), empty), (g_i - g_t, context_len, empty),
                  (g_t, context_len, text)]
        passes = [p for p in passes if p[0] != 0]
        weights = [weight for weight, _, _ in passes]
        ctx_all = torch.cat([context] * len(passes))
        len_all = torch.cat([length for _, length, _ in passes])
        txt_all = torch.cat([embedding for _, _, embedding in passes])
        last = context[:, :, -1:]
        # The anchor depends on the context and x_t only, so the guidance passes share it.
        translations = self.translations(last) if cfg.motion_radius else None
        sampler = type(self.sampler).from_config(self.sampler.config)
        sampler.set_timesteps(num_steps or cfg.sample_steps)
        latents = torch.randn((b, c, cfg.chunk_frames, h, w), generator=generator) * sampler.init_noise_sigma
        was_training = unet.training
        unet.eval()
        timesteps = sampler.timesteps

        def output(latents, t):
            anchor = self.anchor(last, latents, t, translations)
            if cfg.guidance_t_min <= t <= cfg.guidance_t_max:
                return self.guided_output(unet, ctx_all, len_all, txt_all, weights, rescale, latents, t, anchor)
            return self.guided_output(unet, context, len_all[-b:], txt_all[-b:], [1.0], 0.0, latents, t, anchor)

        if cfg.snap_start:
            estimate = output(latents, timesteps[0])
            observe = torch.tensor(cfg.snap_observe)
            snapped = self.anchor(last, self._alpha_sigma(observe)[0] * estimate, observe, translations)
            if cfg.snap_keep_estimate:
                # Where the unmoved frame wins, the posterior mean is that frame up to rounding
                # (~1e-7): a margin keeps such ties on the estimate.
                error = (snapped - estimate).square().sum(1, keepdim=True)
                explained = error < (1 - 1e-4) * (last - estimate).square().sum(1, keepdim=True)
                snapped = torch.where(explained, snapped, estimate)
            begin = int((timesteps > cfg.snap_start).sum())
            timesteps = timesteps[begin:]
            if len(timesteps):
                noise = torch.randn(latents.shape, generator=generator)
                latents = self.train_scheduler.add_noise(snapped, noise, timesteps[:1].long())
                sampler.set_begin_index(begin)
            else:
                latents = snapped
        with DeepFeatureCache(unet, cfg.deep_cache_interval):
            for t in timesteps:
                latents = sampler.step(output(latents, t), t, latents).prev_sample
        unet.train(was_training)
        return self.keep_static_cells(latents, last, cfg.static_tolerance) if cfg.static_tolerance else latents

    def guided_output(self, unet, context, context_len, text_embeddings, weights: list[float], rescale: float,
                      latents: torch.Tensor, t: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """The guided UNet output for ``latents`` at ``t`` as the sampler takes it (for "context_residual"
        the x0 estimate around ``anchor``); ``context``, ``context_len`` and ``text_embeddings`` hold the
        guidance passes one after another, mixed by ``weights`` (``generate_chunk``)."""
        cfg = self.config
        n = len(weights)
        anchors = torch.cat([anchor] * n) if cfg.motion_radius else None
        sample = self.window_input(context, context_len, torch.cat([latents] * n), anchors)
        parts = self.denoise(unet, sample, t, text_embeddings)[:, :, cfg.context_frames:].chunk(n)
        guided = sum(weight * part for weight, part in zip(weights, parts))
        if rescale:
            dims = list(range(1, guided.ndim))
            ratio = parts[-1].std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
            guided = rescale * guided * ratio + (1 - rescale) * guided
        if cfg.prediction_type == "context_residual":
            guided = self.residual_x0(latents, guided, t, anchor)
        return guided

    def keep_static_cells(self, latents: torch.Tensor, last: torch.Tensor, tolerance: float) -> torch.Tensor:
        """``latents`` (B, C, F, h, w) with each cell within ``tolerance`` grey levels of ``last``
        (B, C, 1, h, w) in every channel, i.e. every pixel of it, replaced by ``last``'s cell."""
        if tolerance < 0:
            raise ValueError(f"static_tolerance must be >= 0 grey levels, got {tolerance}")
        # SpaceToDepth maps a grey level to scale / 127.5 latent units in every channel.
        unit = self.latent.scale / 127.5
        still = (latents - last).abs().amax(dim=1, keepdim=True) <= tolerance * unit
        return torch.where(still, last.expand_as(latents), latents)

    @torch.no_grad()
    def rollout(self, first_frame: np.ndarray, texts: list[str], seed: int = 0,
                memory=None, progress=None, anchor: bool = False) -> np.ndarray:
        """A long video: one chunk per text, each conditioned on the last frames so far.

        Generation stays in latent space between chunks. ``memory`` (an ``EpisodeMemory``)
        generates each chunk inside ``memory.merged()`` and then learns from it with
        ``memory.update(previous, new)``. ``anchor`` keeps the first frame in the oldest
        context slot (Streaming-T2V-like).
        Returns (1 + len(texts) * chunk_frames, H, W, 3) uint8 frames.
        """
        generator = torch.Generator().manual_seed(seed)
        video = self.latent.encode(np.asarray(first_frame)[None, None])
        fc = self.config.context_frames
        for text in (progress(texts) if progress else texts):
            context = video[:, :, -fc:]
            if anchor and context.shape[2] >= fc:
                context = torch.cat([video[:, :, :1], video[:, :, -(fc - 1):]], dim=2)
            with memory.merged() if memory is not None else contextlib.nullcontext():
                chunk = self.generate_chunk(context, [text], generator=generator)
            if memory is not None:
                memory.update(context, chunk)
            video = torch.cat([video, chunk], dim=2)
        return self.latent.decode(video)[0]

    # --- persistence --------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = asdict(self.config)
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        # A converted copy: casting the live UNet down and back would round its weights.
        copy.deepcopy(self.unet).to(dtype).save_pretrained(path / "unet", safe_serialization=True)

    @classmethod
    def from_pretrained(cls, path: str | Path, text_encoder: TextEncoder | None = None) -> "VideoWorldModel":
        config = WorldModelConfig.from_pretrained(path)
        try:
            unet = UNet3DConditionModel.from_pretrained(Path(path) / "unet", torch_dtype=torch.float32)
        except Exception as error:  # corrupt safetensors or shapes: one clear message
            raise CheckpointError(f"world model checkpoint at {path} is unreadable: {error}; "
                                  "retrain it or restore the folder") from None
        return cls(config, unet.eval(), text_encoder)
