"""Slow learning (``slowfast train``): the masked conditional diffusion loss over a dataset.

One file, top to bottom: config -> data -> model -> loop. HF Accelerate runs the same
loop on a CPU, one GPU or many (``accelerate launch -m agent.cli train ...``).

Run folder (DIAMOND-style): ``OUT/config.yaml`` (this job's config), ``OUT/log.csv``,
``OUT/state/`` (model, EMA, optimizer, RNG and step: what ``--resume`` needs),
``OUT/worldmodel.json`` + ``OUT/unet/`` (EMA weights, fp16: what generation loads) and
``OUT/resume.sh``. Data order is a function of (seed, epoch), so a resumed run skips
exactly the batches it had already seen.
"""

from __future__ import annotations

import contextlib
import json
import random
import shlex
import time
from functools import partial
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm import tqdm

from envs.dataset import ChunkDataset, load_dataset
from jobconfig import CpuThreads, open_run_log, to_yaml
from worldmodel.model import (PREDICTION_TYPES, VideoWorldModel, WorldModelConfig, with_motion_input,
                              with_text_in_time_embedding)


@dataclass
class NoiseLevelBias:
    """Which noise levels a diffusion loss trains on (slow training and the slow-fast loop)."""
    high_noise_portion: float = field(default=0.0, metadata={
        "group": "noise levels",
        "help": "top fraction of the noise schedule sampled --high-noise-weight times as often as the rest; "
                "only there does x_t hide where the chunk goes, so only there must the model read its "
                "conditioning (the text, the memory)"})
    high_noise_weight: float = field(default=1.0, metadata={
        "group": "noise levels", "help": "see --high-noise-portion; 1 = uniform"})

    def __post_init__(self) -> None:
        if not (0 <= self.high_noise_portion < 1) or self.high_noise_weight <= 0:
            raise ValueError("--high-noise-portion must be in [0, 1) and --high-noise-weight > 0, got "
                             f"{self.high_noise_portion} and {self.high_noise_weight}")
        getattr(super(), "__post_init__", lambda: None)()  # the next mixin's checks, if any

    @property
    def uniform_noise_levels(self) -> bool:
        return self.high_noise_portion == 0 or self.high_noise_weight == 1

    def timestep_weights(self, num_timesteps: int) -> torch.Tensor:
        """Sampling weight of each training timestep: the top ``high_noise_portion`` of the
        schedule weighs ``high_noise_weight``, the rest 1 (as diffusers' SDXL example's "later"
        timestep bias)."""
        weights = torch.ones(num_timesteps)
        weights[num_timesteps - int(round(self.high_noise_portion * num_timesteps)):] = self.high_noise_weight
        return weights


@dataclass
class TrainConfig(NoiseLevelBias, CpuThreads):
    task: str = field(default="return_cubes", metadata={"help": "task the data was collected for"})
    data: str = field(default="data/return_cubes", metadata={"help": "dataset folder from `slowfast collect`"})
    out: str = field(default="runs/worldmodel", metadata={"help": "run folder (checkpoint + logs)"})
    seed: int = field(default=0, metadata={"help": "seed for init, noise and data order"})
    max_steps: int = field(default=2000, metadata={"help": "optimizer steps in total"})
    batch_size: int = field(default=8, metadata={"help": "chunks per step"})
    lr: float = field(default=2e-4, metadata={"help": "AdamW learning rate"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    decay_steps: int = field(default=0, metadata={
        "help": "final steps over which the lr falls linearly to 0 (warmup-stable-decay); 0 keeps it constant"})
    ema_decay: float = field(default=0.995, metadata={"help": "EMA decay of the sampling weights"})
    drop_image_prob: float = field(default=0.1, metadata={"help": "P(no context) for 3-way CFG"})
    drop_text_prob: float = field(default=0.1, metadata={"help": "P(empty text) for 3-way CFG"})
    shorten_context_prob: float = field(default=0.3, metadata={"help": "P(random shorter f_p)"})
    context_noise: float = field(default=0.0, metadata={
        "help": "max std (latent units) of Gaussian noise added to the context, level uniform per sample, so the "
                "model learns to correct its own errors in long open-loop rollouts; 0 = off"})
    branch_portion: float = field(default=0.0, metadata={
        "help": "expected share of each batch drawn from counterfactual branch chunks (`slowfast collect "
                "--branches`): the same start walked another way, told apart only by the text; 0 = every chunk "
                "equally likely"})
    val_episodes: int = field(default=4, metadata={"help": "episodes held out for validation loss"})
    save_every: int = field(default=200, metadata={"help": "steps between checkpoints"})
    log_every: int = field(default=10, metadata={"help": "steps between log rows"})
    resume: bool = field(default=False, metadata={"help": "continue from OUT/state"})
    init_from: str | None = field(default=None, metadata={
        "help": "start a new run from a saved world model's weights (e.g. a shipped checkpoint)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    whiten_text: bool = field(default=False, metadata={
        "help": "condition on text embeddings whitened over the data's subgoal texts (WhitenedText); with "
                "--init-from, switches a raw-text checkpoint over"})
    text_in_time_embedding: bool = field(default=False, metadata={
        "help": "also add the text embedding to the noise-level embedding every ResNet block receives; with "
                "--init-from, adds it to the checkpoint's UNet through a zero-initialised projection"})
    zero_terminal_snr: bool = field(default=False, metadata={
        "help": "noise schedule whose last step holds no signal (WorldModelConfig.zero_terminal_snr); with "
                "--init-from, switches the checkpoint's schedule over"})
    context_frames: int = field(default=4, metadata={"help": "context window f_p max"})
    latent_factor: int = field(default=4, metadata={
        "help": "pixels per latent cell side (WorldModelConfig.latent_factor) of a new model; 7 aligns retrace's "
                "cells with Crafter's 7-pixel tiles. --init-from keeps the checkpoint's"})
    block_out_channels: tuple[int, ...] = field(default=(48, 96), metadata={"help": "UNet widths"})
    attention_head_dim: int = field(default=4, metadata={"help": "UNet attention heads"})
    norm_num_groups: int = field(default=16, metadata={"help": "UNet GroupNorm groups"})
    prediction_type: str = field(default="v_prediction", metadata={
        "help": "UNet target: v_prediction, epsilon or context_residual (see WorldModelConfig)"})
    motion_radius: int = field(default=0, metadata={
        "help": "context_residual only: anchor each cell on the posterior mean of the last context frame's "
                "translations by up to this many cells given the noised frame, and show the anchor to the UNet "
                "(WorldModelConfig.motion_radius); 0 = off, or with --init-from the checkpoint's. --init-from a model "
                "without it adds the anchor's input channels with zero weights"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("max_steps", "batch_size", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (0 <= self.decay_steps <= self.max_steps):
            raise ValueError(f"--decay-steps must be in [0, --max-steps={self.max_steps}], got {self.decay_steps}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"--prediction-type must be one of {', '.join(PREDICTION_TYPES)}, "
                             f"got {self.prediction_type!r}")
        if self.context_noise < 0:
            raise ValueError(f"--context-noise must be >= 0, got {self.context_noise}")
        if not (0 <= self.branch_portion < 1):
            raise ValueError(f"--branch-portion must be in [0, 1), got {self.branch_portion}")
        if self.latent_factor < 1:
            raise ValueError(f"--latent-factor must be >= 1, got {self.latent_factor}")
        if self.motion_radius < 0 or (self.motion_radius and self.prediction_type != "context_residual"):
            raise ValueError(f"--motion-radius {self.motion_radius}: needs --prediction-type context_residual and "
                             "a radius >= 1 (0 = off)")
        if not (0 < self.lr < 1):
            raise ValueError(f"--lr must be in (0, 1), got {self.lr}")


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Warm-up, then constant, then a linear fall to 0 over the last `decay_steps`. The
    factor depends only on the step, so a resumed run (even one whose --max-steps or
    --decay-steps was raised) follows the schedule its config now describes."""
    warmup = min(1.0, (step + 1) / cfg.warmup_steps)
    if cfg.decay_steps == 0:
        return warmup
    return warmup * min(1.0, max(0.0, (cfg.max_steps - step) / cfg.decay_steps))


def _split(num_episodes: int, val_episodes: int) -> tuple[list[int], list[int]]:
    val = min(val_episodes, max(0, num_episodes - 1))
    return list(range(num_episodes - val)), list(range(num_episodes - val, num_episodes))


def latent_stats_of(dataset: ChunkDataset) -> tuple[float, float]:
    """(mean, 1 / std) of the pixel latents: centred unit-variance data is what the
    noise schedule and v-prediction assume."""
    frames = [dataset.data.load_episode(e)["frames"][::16] for e in range(min(8, len(dataset.data)))]
    x = np.concatenate(frames).astype(np.float32) / 127.5 - 1.0
    return float(x.mean()), float(1.0 / max(x.std(), 1e-3))


def residual_std_of(dataset: ChunkDataset, chunk_frames: int, scale: float) -> float:
    """Std, in latent units, of each chunk frame minus the frame before the chunk: the
    spread a "context_residual" denoiser has to predict."""
    residuals = []
    for e in range(min(8, len(dataset.data))):
        x = dataset.data.load_episode(e)["frames"].astype(np.float32) / 127.5 - 1.0
        for start in range(0, len(x) - chunk_frames - 1, chunk_frames + 1):
            residuals.append((x[start + 1:start + 1 + chunk_frames] - x[start:start + 1]).ravel())
    return float(scale * np.concatenate(residuals).std())


def chunk_weights(cfg: TrainConfig, dataset: ChunkDataset) -> torch.Tensor | None:
    """Per-chunk sampling weights that give branch chunks ``branch_portion`` of the draws,
    or None for uniform draws. At their natural share (728 branch episodes among 300 main
    ones: 29 % of chunks) and uniform noise levels they did not teach the retrace model the
    direction in 1800 steps; at 80 % and t >= 700 they did in 900 (checkpoints/README.md,
    "Session 14")."""
    if cfg.branch_portion == 0:
        return None
    branch = torch.tensor([dataset.data.episodes[e].get("branch_of") is not None for e, _ in dataset.index])
    if branch.all() or not branch.any():
        raise ValueError(f"--branch-portion needs both main and branch episodes in --data {cfg.data}; collect "
                         "branches with `slowfast collect --branches`")
    branch_weight = cfg.branch_portion * (~branch).sum() / ((1 - cfg.branch_portion) * branch.sum())
    return torch.where(branch, branch_weight.double(), torch.ones((), dtype=torch.double))


def _batch_to_latents(model: VideoWorldModel, batch: dict) -> tuple:
    context = model.latent.encode(batch["context"])
    target = model.latent.encode(batch["target"])
    return context, batch["context_len"].long(), target


def _condition_dropout(cfg: TrainConfig, context_len: torch.Tensor, texts: list[str],
                       rng: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    b = len(texts)
    u = torch.rand(b, 3, generator=rng)
    shorter = (torch.rand(b, generator=rng) * context_len.float()).long() + 1
    context_len = torch.where(u[:, 0] < cfg.shorten_context_prob, torch.minimum(shorter, context_len), context_len)
    context_len = torch.where(u[:, 1] < cfg.drop_image_prob, torch.zeros_like(context_len), context_len)
    texts = ["" if u[i, 2] < cfg.drop_text_prob else t for i, t in enumerate(texts)]
    return context_len, texts


def corrupt_context(cfg: TrainConfig, context: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Noise augmentation of the conditioning frames (as GameNGen does): in an open-loop
    rollout the context is the model's own output, errors included, and a model that only
    saw clean context copies them forward (a "context_residual" model, anchored on the
    noised last frame, learns to remove them instead)."""
    if cfg.context_noise == 0:
        return context
    level = torch.rand(context.shape[0], 1, 1, 1, 1, generator=rng) * cfg.context_noise
    return context + level * torch.randn(context.shape, generator=rng)


@torch.no_grad()
def validation_loss(model: VideoWorldModel, loader: DataLoader, seed: int) -> float:
    rng = torch.Generator().manual_seed(seed)
    losses = []
    model.unet.eval()
    for batch in loader:
        context, context_len, target = _batch_to_latents(model, batch)
        text = model.embed(batch["text"])
        losses.append(model.training_loss(context, context_len, target, text, generator=rng).item())
    model.unet.train()
    return float(np.mean(losses)) if losses else float("nan")


def run_train(cfg: TrainConfig) -> dict:
    cfg.apply_threads()
    out = Path(cfg.out)
    state_dir = out / "state"
    if cfg.resume and not (state_dir / "progress.json").is_file():
        raise ValueError(f"--resume: no training state in {state_dir}; start without --resume")
    if not cfg.resume and state_dir.exists():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    data = load_dataset(cfg.data)
    if data.info["task"] != cfg.task:
        raise ValueError(f"--data {cfg.data} holds task {data.info['task']!r}, not --task {cfg.task!r}")
    out.mkdir(parents=True, exist_ok=True)

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    train_eps, val_eps = _split(len(data), cfg.val_episodes)
    train_set = ChunkDataset(cfg.data, cfg.context_frames, train_eps)
    val_set = ChunkDataset(cfg.data, cfg.context_frames, val_eps)

    whitening_texts = (sorted({s["text"] for e in train_eps for s in data.episodes[e]["subgoals"]} | {""})
                       if cfg.whiten_text else [])
    chunk_frames = int(data.info["chunk_frames"])
    if cfg.resume:
        # The run's own saved model: its config is the one it trained with (a run started with
        # --init-from carries that checkpoint's guidance and memory settings); the weights are
        # replaced by the saved training state below.
        model = VideoWorldModel.from_pretrained(out)
        model.unet.train()
    elif cfg.init_from:
        start = VideoWorldModel.from_pretrained(cfg.init_from)
        if start.config.task != cfg.task:
            raise ValueError(f"--init-from {cfg.init_from} is a {start.config.task!r} model, not --task {cfg.task!r}")
        # The weights and the latent space come from the checkpoint, the target from this run.
        text_in_time = cfg.text_in_time_embedding or start.config.text_in_time_embedding
        unet = (with_text_in_time_embedding(start.unet) if text_in_time and not start.config.text_in_time_embedding
                else start.unet)
        config = replace(start.config, prediction_type=cfg.prediction_type,
                         residual_std=residual_std_of(train_set, chunk_frames, start.config.latent_scale),
                         text_whitening=whitening_texts or start.config.text_whitening,
                         text_in_time_embedding=text_in_time,
                         zero_terminal_snr=cfg.zero_terminal_snr or start.config.zero_terminal_snr,
                         motion_radius=cfg.motion_radius or start.config.motion_radius)
        if config.motion_radius and not start.config.motion_radius:
            unet = with_motion_input(unet, config)
        model = VideoWorldModel(config, unet.train(), start.text_encoder)
    else:
        shift, scale = latent_stats_of(train_set)
        model = VideoWorldModel(WorldModelConfig(
            image_size=int(data.info["image_size"]), latent_factor=cfg.latent_factor,
            context_frames=cfg.context_frames, chunk_frames=chunk_frames,
            block_out_channels=tuple(cfg.block_out_channels),
            attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups, task=cfg.task,
            latent_shift=shift, latent_scale=scale, prediction_type=cfg.prediction_type,
            residual_std=residual_std_of(train_set, chunk_frames, scale), text_whitening=whitening_texts,
            text_in_time_embedding=cfg.text_in_time_embedding, zero_terminal_snr=cfg.zero_terminal_snr,
            motion_radius=cfg.motion_radius))
    unet = model.unet
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, cfg))
    unet, optimizer, schedule = accelerator.prepare(unet, optimizer, schedule)
    model.unet = unet
    accelerator.register_for_checkpointing(ema)

    step = 0
    if cfg.resume:
        accelerator.load_state(str(state_dir))
        step = json.loads((state_dir / "progress.json").read_text())["step"]
        for group in optimizer.param_groups:  # the saved lr came from the schedule the run was started with
            group["lr"] = cfg.lr * lr_factor(cfg, step)
    # Rewritten on resume too, so a raised --max-steps/--decay-steps stays with the run.
    (out / "config.yaml").write_text(to_yaml(replace(cfg, resume=False)))
    (out / "resume.sh").write_text(
        "#!/usr/bin/env bash\n" + shlex.join(["slowfast", "train", "--config", str(out / "config.yaml"),
                                              "--resume"]) + "\n")
    steps_per_epoch = max(1, len(train_set) // cfg.batch_size)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False)
    log_file, log = open_run_log(out / "log.csv", ["step", "loss", "val_loss", "lr", "seconds"], cfg.resume, step)
    noise_rng = torch.Generator()
    weights = cfg.timestep_weights(model.config.num_train_timesteps)
    draw_weights = chunk_weights(cfg, train_set)
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {cfg.task}", disable=not cfg.progress)
    started, running = time.time(), []
    unet.train()
    while step < cfg.max_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        order = torch.Generator().manual_seed(cfg.seed + epoch)
        if draw_weights is None:
            loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=order, drop_last=True)
        else:
            sampler = WeightedRandomSampler(draw_weights, len(train_set), replacement=True, generator=order)
            loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True)
        loader = accelerator.skip_first_batches(loader, offset) if offset else loader
        for batch in loader:
            # Seeded per step, so a resumed run draws the same noise as an unbroken one.
            noise_rng.manual_seed(cfg.seed * 1_000_003 + step)
            context, context_len, target = _batch_to_latents(model, batch)
            context_len, texts = _condition_dropout(cfg, context_len, list(batch["text"]), noise_rng)
            context = corrupt_context(cfg, context, noise_rng)
            timesteps = torch.multinomial(weights, len(texts), replacement=True, generator=noise_rng)
            loss = model.training_loss(context, context_len, target, model.embed(texts), noise_rng, timesteps)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}; resume from the last checkpoint "
                                         f"with a lower --lr (`bash {out / 'resume.sh'}`)")
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            ema.step(unet.parameters())
            step += 1
            running.append(loss.item())
            bar.update(1)
            val = ""
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                val = validation_loss(model, val_loader, cfg.seed)
                _checkpoint(accelerator, model, ema, out, step)
            if step % cfg.log_every == 0 or val != "":
                log.writerow([step, float(np.mean(running)), val, schedule.get_last_lr()[0],
                              round(time.time() - started, 1)])
                log_file.flush()
                bar.set_postfix(loss=f"{np.mean(running):.4f}")
                running = []
            if step >= cfg.max_steps:
                break
    bar.close()
    log_file.close()
    return {"step": step, "out": str(out), "seconds": round(time.time() - started, 1)}


def _checkpoint(accelerator: Accelerator, model: VideoWorldModel, ema: EMAModel, out: Path, step: int) -> None:
    state_dir = out / "state"
    accelerator.save_state(str(state_dir))
    (state_dir / "progress.json").write_text(json.dumps({"step": step}))
    unet = accelerator.unwrap_model(model.unet)
    with averaged(ema, list(unet.parameters())):
        VideoWorldModel(model.config, unet, model.text_encoder).save_pretrained(out)


@contextlib.contextmanager
def averaged(ema: EMAModel | None, params: list[torch.nn.Parameter]):
    """The EMA weights in ``params`` while the block runs, the raw ones afterwards."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def run_train_command(cfg: TrainConfig) -> int:
    print(json.dumps(run_train(cfg)))
    return 0
