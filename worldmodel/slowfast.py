"""Slow-fast learning loop (``slowfast finetune``, paper Sec. 3.3, Algorithm 1b).

For every training episode, in order:

1. Inner loop (fast learning, base weights Phi fixed): reset Temp-LoRA, then for each
   ground-truth chunk i update the adapter on (X_{i-1}, X_i) exactly as at inference
   time and record the snapshot Theta_i, which has seen chunks 0..i only. The
   episode's snapshots are written to ``OUT/snapshots/episode_NNNNNN.safetensors``
   (adapter tensors only, fp16, keyed ``i/<tensor>``).
2. Outer loop (slow learning, Theta frozen): for each i, load Theta_i into the adapter
   and update Phi on the masked conditional loss of X_i -> X_{i+1} with its subgoal
   text. One loaded snapshot serves a batch of ``noise_samples`` noise draws.
   ``--outer-chunks return`` keeps only the pairs whose X_{i+1} belongs to the task's
   return phase: the ones whose way the text does not give and a memory of the first
   phase should. ``--contrast-weight w`` adds a hinge, w * max(0, margin + L_own -
   L_other), where L_other is the same pair's loss under the same noise with the previous
   training episode's snapshot at chunk i: Alg. 1b alone rewards any adapter that lowers
   the loss, so a base can learn a bias every memory carries instead of what its own
   memory holds (measured: own vs another's 1-2 %, session 38).

Repeated for ``epochs``. The finetuned base (without adapter; an EMA of Phi, as slow
training saves) is saved like any world model, with the Temp-LoRA settings it learned
to read in its config (``temp_lora``), so planning uses the same memory.
``OUT/log.csv`` has the outer loss with memory, and at every checkpoint the validation
loss (EMA weights) on held-out episodes with their own memory, without any, and with
another held-out episode's (the control that tells an episodic memory from a bias).
Resumable after a kill: the state is saved with every checkpoint
(``--save-every`` episodes) and a resumed run repeats the episodes after it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import tasks
from envs.dataset import ChunkDataset, load_dataset
from jobconfig import CpuThreads, open_run_log, to_yaml
from worldmodel.memory import EpisodeMemory, MemoryConfig, MemoryOverrides, adapter_parameters, base_parameters
from worldmodel.model import VideoWorldModel, build_unet
from worldmodel.train import NoiseLevelBias, averaged


# val_loss_other_memory came last, so run folders logged before it resume under this header.
LOG_COLUMNS = ("episodes_done", "epoch", "episode", "loss_memory", "val_loss_memory", "val_loss_no_memory",
               "inner_seconds", "outer_seconds", "val_loss_other_memory", "loss_other_memory")


@dataclass
class FinetuneConfig(MemoryOverrides, NoiseLevelBias, CpuThreads):
    task: str = field(default="return_cubes", metadata={"help": "task name"})
    from_checkpoint: str = field(default="checkpoints/return_cubes/worldmodel",
                                 metadata={"flag": "--from", "help": "slow-learned world model to start from"})
    data: str = field(default="data/return_cubes", metadata={"help": "dataset folder"})
    out: str = field(default="runs/finetune", metadata={"help": "run folder"})
    seed: int = field(default=0, metadata={"help": "seed for noise and memory"})
    epochs: int = field(default=1, metadata={"help": "passes over the training episodes"})
    max_episodes: int = field(default=0, metadata={"help": "training episodes to use (0 = all)"})
    max_chunks: int = field(default=0, metadata={"help": "use each episode's first N chunks (0 = all)"})
    lr: float = field(default=5e-5, metadata={"help": "slow learning rate (base weights)"})
    ema_decay: float = field(default=0.995, metadata={
        "help": "EMA decay of the base weights that are validated and saved (0: the raw weights)"})
    noise_samples: int = field(default=4, metadata={"help": "noise draws per (snapshot, pair) batch"})
    outer_chunks: str = field(default="all", metadata={
        "help": "chunks the outer loss learns: all (Alg. 1b) | return (only the task's return phase, the chunks "
                "a memory of the first phase should help)"})
    contrast_weight: float = field(default=0.0, metadata={
        "help": "weight of the hinge asking the loss with the episode's own memory to be --contrast-margin below "
                "the loss with the previous episode's memory (0: off, plain Alg. 1b)"})
    contrast_margin: float = field(default=0.05, metadata={"help": "the hinge's margin, in loss units"})
    memory_rank: int | None = field(default=None, metadata={
        "group": "Temp-LoRA memory", "help": "rank, alpha = rank",
        "default_text": f"--from's, else {MemoryConfig.rank}"})
    val_episodes: int = field(default=2, metadata={"help": "held-out episodes for validation"})
    save_every: int = field(default=5, metadata={"help": "episodes between checkpoints"})
    keep_snapshots: bool = field(default=False, metadata={"help": "keep every episode's snapshot file"})
    resume: bool = field(default=False, metadata={"help": "continue from OUT/state"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("epochs", "noise_samples", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.contrast_weight < 0 or self.contrast_margin < 0:
            raise ValueError(f"--contrast-weight and --contrast-margin must be >= 0, got {self.contrast_weight} "
                             f"and {self.contrast_margin}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.outer_chunks not in ("all", "return"):
            raise ValueError(f"--outer-chunks must be all or return, got {self.outer_chunks!r}")


def base_state_dict(unet) -> dict[str, torch.Tensor]:
    """The UNet's own weights without adapter tensors, under their original names."""
    return {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}


def episode_chunks(dataset: ChunkDataset, episode: int, model: VideoWorldModel, limit: int = 0) -> list[dict]:
    """Latents of one episode's chunks in order: context, context_len, target, text, kind."""
    items = [dataset[i] for i, (e, _) in enumerate(dataset.index) if e == episode]
    items = sorted(items, key=lambda x: x["start"])[:limit or None]
    out = []
    for item in items:
        out.append({"context": model.latent.encode(item["context"][None]),
                    "context_len": torch.tensor([item["context_len"]]),
                    "target": model.latent.encode(item["target"][None]), "text": item["text"],
                    "kind": item["kind"]})
    return out


def pack_snapshots(snapshots: list[dict]) -> dict[str, torch.Tensor]:
    return {f"{i}/{k}": v.contiguous() for i, s in enumerate(snapshots) for k, v in s.items()}


def unpack_snapshots(tensors: dict[str, torch.Tensor]) -> list[dict]:
    snapshots: dict[int, dict] = {}
    for key, value in tensors.items():
        i, name = key.split("/", 1)
        snapshots.setdefault(int(i), {})[name] = value
    return [snapshots[i] for i in sorted(snapshots)]


def inner_loop(memory: EpisodeMemory, chunks: list[dict]) -> list[dict[str, torch.Tensor]]:
    """Fast learning over an episode's ground truth; snapshot i has seen chunks 0..i."""
    memory.reset()
    snapshots = []
    for chunk in chunks:
        context = chunk["context"][:, :, -int(chunk["context_len"]):]
        memory.update(context, chunk["target"])
        snapshots.append({k: v.half() for k, v in memory.state_dict().items()})
    return snapshots


def outer_loss(model: VideoWorldModel, memory: EpisodeMemory, snapshot: dict, next_chunk: dict,
               samples: int, generator: torch.Generator, timestep_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``timestep_weights`` None: uniform noise levels, drawn as before the weights existed."""
    memory.load_state_dict({k: v.float() for k, v in snapshot.items()})
    rep = lambda x: x.repeat(samples, *([1] * (x.dim() - 1)))  # noqa: E731
    text = model.embed([next_chunk["text"]] * samples)
    timesteps = None if timestep_weights is None else torch.multinomial(
        timestep_weights, samples, replacement=True, generator=generator)
    return model.training_loss(rep(next_chunk["context"]), rep(next_chunk["context_len"]),
                               rep(next_chunk["target"]), text, generator, timesteps)


def aligned(snapshots: list[dict], i: int) -> dict:
    """Another episode's snapshot at chunk i (its last one if it is shorter)."""
    return snapshots[min(i, len(snapshots) - 1)]


def outer_pairs(chunks: list[dict], kinds: tuple[str, ...] | None) -> list[int]:
    """The i whose pair X_i -> X_{i+1} the outer loss learns: all, or those whose X_{i+1} is of ``kinds``."""
    return [i for i in range(len(chunks) - 1) if kinds is None or chunks[i + 1]["kind"] in kinds]


@torch.no_grad()
def memory_readings(model: VideoWorldModel, memory: EpisodeMemory, episodes: list[list[dict]], seed: int,
                    kinds: tuple[str, ...] | None, timestep_weights: torch.Tensor | None) -> dict[str, list[float]]:
    """Loss of every held-out pair the outer loss learns, with the episode's own memory
    (``memory``), with the adapter zeroed (``no_memory``), and (two or more episodes) with
    the next held-out episode's memory at the same chunk (``other_memory``): a base that
    reads its memory episodically does best with its own, one that learned a bias any
    memory carries does as well with another's. The same noise for all three; the lists
    are aligned pair by pair. Read in eval mode: dropout would give the three readings
    different masks (and draw on the global RNG a resumed loop restores)."""
    was_training = model.unet.training
    model.unet.eval()
    try:
        return _readings(model, memory, episodes, seed, kinds, timestep_weights)
    finally:
        model.unet.train(was_training)


def _readings(model, memory, episodes, seed, kinds, timestep_weights) -> dict[str, list[float]]:
    with torch.enable_grad():
        snapshots = [inner_loop(memory, chunks) for chunks in episodes]
    zero = {k: torch.zeros_like(v) for k, v in snapshots[0][0].items()}
    losses = {"memory": [], "no_memory": [], "other_memory": []}
    for e, chunks in enumerate(episodes):
        other = snapshots[(e + 1) % len(episodes)]
        for i in outer_pairs(chunks, kinds):
            readings = {"memory": snapshots[e][i], "no_memory": zero}
            if len(episodes) > 1:
                readings["other_memory"] = aligned(other, i)
            for name, snapshot in readings.items():
                g = torch.Generator().manual_seed(seed + i)
                losses[name].append(outer_loss(model, memory, snapshot, chunks[i + 1], 2, g, timestep_weights).item())
    return losses


def validation(model: VideoWorldModel, memory: EpisodeMemory, episodes: list[list[dict]], seed: int,
               kinds: tuple[str, ...] | None, timestep_weights: torch.Tensor | None) -> dict:
    """The mean of each of ``memory_readings``, as the log's ``val_loss_*`` cells ("" if none)."""
    losses = memory_readings(model, memory, episodes, seed, kinds, timestep_weights)
    return {f"val_loss_{name}": float(np.mean(values)) if values else "" for name, values in losses.items()}


def run_finetune(cfg: FinetuneConfig) -> int:
    cfg.apply_threads()
    out = Path(cfg.out)
    state_dir = out / "state"
    if cfg.resume and not (state_dir / "progress.json").is_file():
        raise ValueError(f"--resume: no finetuning state in {state_dir}; start without --resume")
    if not cfg.resume and state_dir.exists():
        raise ValueError(f"{out} already holds a run; pass --resume or choose another --out")
    data = load_dataset(cfg.data)
    if data.info["task"] != cfg.task:
        raise ValueError(f"--data {cfg.data} holds task {data.info['task']!r}, not --task {cfg.task!r}")
    model = VideoWorldModel.from_pretrained(cfg.from_checkpoint)
    if model.config.task != cfg.task:
        raise ValueError(f"--from {cfg.from_checkpoint} is a {model.config.task!r} model, not --task {cfg.task!r}")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    dataset = ChunkDataset(cfg.data, model.config.context_frames)
    n_val = min(cfg.val_episodes, max(0, len(data) - 1))
    train_eps = list(range(len(data) - n_val))
    if cfg.max_episodes:
        train_eps = train_eps[:cfg.max_episodes]
    val_chunks = [episode_chunks(dataset, e, model, cfg.max_chunks) for e in range(len(data) - n_val, len(data))]

    memory = EpisodeMemory(model, cfg.memory_config(
        model, rank=cfg.memory_rank, alpha=float(cfg.memory_rank) if cfg.memory_rank else None, seed=cfg.seed))
    model.config.temp_lora = memory.config.to_dict()  # the finetuned base is read with this memory
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    optimizer = torch.optim.AdamW(base_parameters(model.unet), lr=cfg.lr, weight_decay=0.0)
    unet, optimizer = accelerator.prepare(model.unet, optimizer)
    model.unet = unet
    # Like slow training's sampling weights: one episode's pairs make a small, noisy batch,
    # and the raw weights drift off the slow-learned optimum (retrace val +2 % in 20 episodes).
    ema = EMAModel(base_parameters(unet), decay=cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    done = 0
    # The contrast's other memory: the previous episode's snapshots, kept with the state so a
    # resumed run reads the same ones.
    previous_file = state_dir / "previous_snapshots.safetensors"
    previous = None
    if cfg.resume:
        accelerator.load_state(str(state_dir))
        done = json.loads((state_dir / "progress.json").read_text())["episodes_done"]
        if cfg.contrast_weight and previous_file.is_file():
            previous = unpack_snapshots(load_file(previous_file))
    # Rewritten on resume too, so a raised --max-episodes/--epochs stays with the run.
    (out / "config.yaml").write_text(to_yaml(replace(cfg, resume=False)))
    log_file, log = open_run_log(out / "log.csv", list(LOG_COLUMNS), cfg.resume, done)
    schedule = [(epoch, e) for epoch in range(cfg.epochs) for e in train_eps]
    kinds = tasks.get(cfg.task).RETURN_KINDS if cfg.outer_chunks == "return" else None
    # Uniform levels keep the draws (and so the runs) of the loop before the option existed.
    weights = None if cfg.uniform_noise_levels else cfg.timestep_weights(model.config.num_train_timesteps)
    bar = tqdm(total=len(schedule), initial=done, desc=f"finetune {cfg.task}", unit="episode",
               disable=not cfg.progress)
    generator = torch.Generator()
    for epoch, episode in schedule[done:]:
        chunks = episode_chunks(dataset, episode, model, cfg.max_chunks)
        began = time.perf_counter()
        for p in base_parameters(unet):
            p.requires_grad_(False)
        snapshots = inner_loop(memory, chunks)
        inner_seconds = time.perf_counter() - began
        snapshot_file = out / "snapshots" / f"episode_{episode:06d}.safetensors"
        snapshot_file.parent.mkdir(exist_ok=True)
        save_file(pack_snapshots(snapshots), snapshot_file)

        began = time.perf_counter()
        for p in base_parameters(unet):
            p.requires_grad_(True)
        for p in adapter_parameters(unet):
            p.requires_grad_(False)
        unet.train()
        losses, other_losses = [], []
        for i in outer_pairs(chunks, kinds):
            generator.manual_seed(cfg.seed * 1_000_003 + done * 1_000 + i)
            noise_draw = generator.get_state()
            other_value = None
            if cfg.contrast_weight and previous is not None:
                with torch.no_grad():
                    other_value = outer_loss(model, memory, aligned(previous, i), chunks[i + 1], cfg.noise_samples,
                                             generator, weights).item()
                generator.set_state(noise_draw)
            loss = outer_loss(model, memory, snapshots[i], chunks[i + 1], cfg.noise_samples, generator, weights)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss in episode {episode}; resume with a lower --lr")
            # Loading the other snapshot rewrites the adapter in place, so each memory's
            # loss is back-propagated before the next is computed.
            hinge = other_value is not None and cfg.contrast_margin + loss.item() - other_value > 0
            accelerator.backward(loss * (1 + cfg.contrast_weight * hinge))
            if hinge:
                generator.set_state(noise_draw)
                other_loss = outer_loss(model, memory, aligned(previous, i), chunks[i + 1], cfg.noise_samples,
                                        generator, weights)
                accelerator.backward(-cfg.contrast_weight * other_loss)
            if other_value is not None:
                other_losses.append(other_value)
            accelerator.clip_grad_norm_(base_parameters(unet), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            if ema is not None:
                ema.step(base_parameters(unet))
            losses.append(loss.item())
        outer_seconds = time.perf_counter() - began
        previous = snapshots
        if not cfg.keep_snapshots:
            snapshot_file.unlink()
        done += 1
        bar.update(1)
        row = {"episodes_done": done, "epoch": epoch, "episode": episode,
               "loss_memory": float(np.mean(losses)) if losses else "",
               "loss_other_memory": float(np.mean(other_losses)) if other_losses else "",
               "inner_seconds": round(inner_seconds, 2), "outer_seconds": round(outer_seconds, 2)}
        if done % cfg.save_every == 0 or done == len(schedule):
            accelerator.save_state(str(state_dir))
            (state_dir / "progress.json").write_text(json.dumps({"episodes_done": done}))
            if cfg.contrast_weight:
                save_file(pack_snapshots(previous), previous_file)
            with averaged(ema, base_parameters(unet)):
                if val_chunks:
                    row |= validation(model, memory, val_chunks, cfg.seed, kinds, weights)
                # A UNet's init draws on the global RNG that the outer loss's dropout reads and
                # the saved state holds: without the fork a resumed run drops other units.
                with torch.random.fork_rng():
                    clean = build_unet(model.config)
                clean.load_state_dict(base_state_dict(accelerator.unwrap_model(unet)))
            VideoWorldModel(model.config, clean, model.text_encoder).save_pretrained(out)
        log.writerow([row.get(column, "") for column in LOG_COLUMNS])
        log_file.flush()
    bar.close()
    log_file.close()
    print(json.dumps({"episodes_done": done, "out": str(out)}))
    return 0
