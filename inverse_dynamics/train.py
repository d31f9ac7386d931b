"""``slowfast train-idm``: fit the inverse-dynamics model on a collected dataset.

Generated frames are blurrier and noisier than renders, so training pairs are
augmented with a random Gaussian blur, pixel noise and a brightness shift (the same
blur and shift for both frames of a pair, independent noise). Validation runs on
held-out episodes, on clean frames and on augmented ones.

``--imagined-data`` (a dataset from ``slowfast imagine``: the world model's own chunks with
the expert's actions) fills a share of every batch with imagined frame pairs, which is what
the planner makes the IDM read; ``--init-from`` starts from a trained IDM, so a model that
reads rendered frames can be taught to read imagined ones too. The imagined chunks of the
last tenth of their source episodes are held out and scored (``val_imagined_*``).

Run folder: ``OUT/config.yaml``, ``OUT/log.csv``, ``OUT/state.pt`` (for ``--resume``), ``OUT/idm.json`` +
``OUT/idm.safetensors`` (the model, fp16, with its normaliser).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

from envs.dataset import FramePairDataset, load_dataset
from inverse_dynamics.model import CONTINUOUS_TARGETS, IDMConfig, InverseDynamicsModel, action_spec, split_actions
from jobconfig import CpuThreads, open_run_log, to_yaml


@dataclass
class TrainIDMConfig(CpuThreads):
    task: str = field(default="return_cubes", metadata={"help": "task the data was collected for"})
    data: str = field(default="data/return_cubes", metadata={"help": "dataset folder"})
    out: str = field(default="runs/idm", metadata={"help": "run folder"})
    seed: int = field(default=0, metadata={"help": "seed for init, augmentation and data order"})
    max_steps: int = field(default=3000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=64, metadata={"help": "pairs per step"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    augment_prob: float = field(default=0.8, metadata={"help": "P(blur/noise/brightness) per pair"})
    continuous_target: str = field(default="next_position", metadata={
        "help": "return_cubes: regress the end effector's next position (next_position) or the commanded delta"})
    static_prob: float = field(default=0.1, metadata={
        "help": "discrete tasks: P(a pair is replaced by (frame, same frame) labelled action 0)"})
    val_episodes: int = field(default=8, metadata={"help": "held-out episodes for validation"})
    imagined_data: str | None = field(default=None, metadata={
        "help": "dataset from `slowfast imagine` (imagined chunks with the true actions) mixed into every batch"})
    imagined_portion: float = field(default=0.5, metadata={"help": "share of each batch from --imagined-data"})
    init_from: str | None = field(default=None, metadata={
        "help": "IDM checkpoint to start from (its weights and normaliser), e.g. checkpoints/TASK/idm"})
    save_every: int = field(default=500, metadata={"help": "steps between checkpoints"})
    resume: bool = field(default=False, metadata={"help": "continue from OUT/state.pt"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("max_steps", "batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.imagined_portion < 1:
            raise ValueError(f"--imagined-portion must lie strictly between 0 and 1, got {self.imagined_portion}")
        if self.continuous_target not in CONTINUOUS_TARGETS:
            raise ValueError(f"--continuous-target must be one of {', '.join(CONTINUOUS_TARGETS)}, "
                             f"got {self.continuous_target!r}")


def augment(pair: torch.Tensor, prob: float, rng: torch.Generator) -> torch.Tensor:
    """Blur + noise + brightness on (B, 6, H, W) model inputs (frame a, change b - a)."""
    a, change = pair[:, :3], pair[:, 3:]
    frames = torch.cat([a, a + change], dim=1)
    out = _corrupt(frames, prob, rng)
    return torch.cat([out[:, :3], out[:, 3:] - out[:, :3]], dim=1)


def _corrupt(pair: torch.Tensor, prob: float, rng: torch.Generator) -> torch.Tensor:
    b = pair.shape[0]
    apply = (torch.rand(b, generator=rng) < prob).float()[:, None, None, None]
    sigma = torch.rand(b, generator=rng) * 1.2 + 1e-3
    x = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-(x[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(-1, keepdim=True)  # (B, 5)
    channels = pair.shape[1]
    grouped = pair.reshape(1, b * channels, *pair.shape[2:])
    k = kernel.repeat_interleave(channels, 0)
    blurred = F.conv2d(F.pad(grouped, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * channels)
    blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=b * channels)
    blurred = blurred.reshape(pair.shape)
    noise = torch.randn(pair.shape, generator=rng) * (torch.rand(b, 1, 1, 1, generator=rng) * 0.08)
    shift = (torch.rand(b, 1, 1, 1, generator=rng) - 0.5) * 0.2
    out = (blurred + noise + shift).clamp(-1, 1)
    return apply * out + (1 - apply) * pair


def _loss(model: InverseDynamicsModel, pair, continuous, classes) -> tuple[torch.Tensor, dict]:
    pred_continuous, logits = model(pair)
    loss = torch.zeros(())
    stats = {}
    if pred_continuous is not None:
        loss = loss + F.mse_loss(pred_continuous, model.normalise(continuous))
        stats["continuous_mae"] = (model.denormalise(pred_continuous) - continuous).abs().mean().item()
    if logits is not None:
        loss = loss + F.cross_entropy(logits, classes)
        stats["accuracy"] = (logits.argmax(-1) == classes).float().mean().item()
    return loss, stats


def _targets(model: InverseDynamicsModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    continuous, classes = split_actions(model.config.task, batch["action"].numpy())
    if model.config.continuous_dim and model.config.continuous_target == "next_position":
        return batch["next_ee_pos"], torch.from_numpy(classes)
    return torch.from_numpy(continuous), torch.from_numpy(classes)


def _imagined_split(cfg: TrainIDMConfig) -> tuple[FramePairDataset, FramePairDataset]:
    """The imagined pairs for training and for validation: the chunks of the last tenth of the
    source episodes (at least one) are held out, so no validation chunk shares an episode with training."""
    imagined = load_dataset(cfg.imagined_data)
    if imagined.info["task"] != cfg.task or "imagined_by" not in imagined.info:
        raise ValueError(f"--imagined-data {cfg.imagined_data} is not a {cfg.task} dataset made by `slowfast "
                         f"imagine --task {cfg.task}`; make one with it")
    sources = sorted({line["source_episode"] for line in imagined.episodes})
    if len(sources) < 2:
        raise ValueError(f"--imagined-data {cfg.imagined_data} comes from {len(sources)} source episode(s); "
                         "imagine at least 2 so that one can be held out")
    held_out = set(sources[-max(1, len(sources) // 10):])
    train = [i for i, line in enumerate(imagined.episodes) if line["source_episode"] not in held_out]
    val = [i for i, line in enumerate(imagined.episodes) if line["source_episode"] in held_out]
    return FramePairDataset(cfg.imagined_data, train), FramePairDataset(cfg.imagined_data, val)


def _initial_model(cfg: TrainIDMConfig, continuous_dim: int, classes: int) -> InverseDynamicsModel:
    model = InverseDynamicsModel.from_pretrained(cfg.init_from)
    got = (model.config.task, model.config.continuous_dim, model.config.discrete_classes)
    if got != (cfg.task, continuous_dim, classes):
        raise ValueError(f"--init-from {cfg.init_from} is an IDM for {got[0]} with {got[1]} continuous dims and "
                         f"{got[2]} classes; this run needs {cfg.task} with {continuous_dim} and {classes}")
    if continuous_dim and model.config.continuous_target != cfg.continuous_target:
        raise ValueError(f"--init-from {cfg.init_from} predicts {model.config.continuous_target}; "
                         f"pass --continuous-target {model.config.continuous_target}")
    return model.train()


def _with_imagined_pairs(batch: dict, imagined: FramePairDataset, count: int, rng: torch.Generator) -> dict:
    """``count`` imagined pairs drawn at random (a function of the step's seed, so a resumed run draws the
    same ones) appended to the batch of rendered pairs."""
    picks = torch.randint(len(imagined), (count,), generator=rng).tolist()
    extra = default_collate([imagined[i] for i in picks])
    return {key: torch.cat([value, extra[key]]) for key, value in batch.items()}


def _with_static_pairs(batch: dict, prob: float, rng: torch.Generator) -> dict:
    """Unchanged frames mean "no move" (action 0). Expert episodes start moving at once, so
    a standing agent with its initial sprite is too rare in the data to be learned."""
    static = torch.rand(len(batch["action"]), generator=rng) < prob
    next_frame = torch.where(static[:, None, None, None], batch["frame"], batch["next_frame"])
    action = torch.where(static[:, None], torch.zeros_like(batch["action"]), batch["action"])
    return {**batch, "next_frame": next_frame, "action": action}


@torch.no_grad()
def evaluate(model: InverseDynamicsModel, loader: DataLoader, augment_prob: float = 0.0, seed: int = 0) -> dict:
    rng = torch.Generator().manual_seed(seed)
    model.eval()
    totals: dict[str, list[float]] = {}
    for batch in loader:
        pair = model.to_input(batch["frame"], batch["next_frame"])
        if augment_prob:
            pair = augment(pair, augment_prob, rng)
        loss, stats = _loss(model, pair, *_targets(model, batch))
        for k, v in {"loss": loss.item(), **stats}.items():
            totals.setdefault(k, []).append(v)
    model.train()
    return {k: float(np.mean(v)) for k, v in totals.items()}


def run_train_idm(cfg: TrainIDMConfig) -> int:
    cfg.apply_threads()
    out = Path(cfg.out)
    data = load_dataset(cfg.data)
    if data.info["task"] != cfg.task:
        raise ValueError(f"--data {cfg.data} holds task {data.info['task']!r}, not --task {cfg.task!r}")
    if cfg.resume and not (out / "state.pt").is_file():
        raise ValueError(f"--resume: no training state in {out}; start without --resume")
    if not cfg.resume and (out / "state.pt").exists():
        raise ValueError(f"{out} already holds a run; pass --resume or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    val = min(cfg.val_episodes, max(0, len(data) - 1))
    train_set = FramePairDataset(cfg.data, list(range(len(data) - val)))
    val_set = FramePairDataset(cfg.data, list(range(len(data) - val, len(data))))
    imagined_train, imagined_val = _imagined_split(cfg) if cfg.imagined_data else (None, None)
    imagined_batch = round(cfg.batch_size * cfg.imagined_portion) if imagined_train is not None else 0
    if imagined_train is not None and not 1 <= imagined_batch < cfg.batch_size:
        raise ValueError(f"--batch-size {cfg.batch_size} with --imagined-portion {cfg.imagined_portion} leaves no "
                         "room for both rendered and imagined pairs; raise --batch-size")
    continuous_dim, classes = action_spec(cfg.task)
    classes = int(data.info.get("action_classes") or classes)  # a first-person backend has its own moves
    train_episodes = [data.load_episode(e) for e in range(len(data) - val)]
    if continuous_dim and cfg.continuous_target == "next_position":
        if "obs_ee_pos" not in train_episodes[0]:
            raise ValueError(f"--data {cfg.data} records no end-effector positions; use --continuous-target delta")
        continuous = np.concatenate([ep["obs_ee_pos"][1:] for ep in train_episodes]).astype(np.float32)
    else:
        continuous, _ = split_actions(cfg.task, np.concatenate([ep["actions"] for ep in train_episodes]))
    if cfg.init_from:
        model = _initial_model(cfg, continuous_dim, classes)
    else:
        model = InverseDynamicsModel(IDMConfig(
            task=cfg.task, image_size=int(data.info["image_size"]), continuous_dim=continuous_dim,
            discrete_classes=classes, action_mean=continuous.mean(0).tolist() if continuous_dim else [],
            action_std=(continuous.std(0) + 1e-3).tolist() if continuous_dim else [],
            continuous_target=cfg.continuous_target,
            max_step=float(data.info.get("env_config", {}).get("max_step", 1.0))))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    step = 0
    if cfg.resume:
        state = torch.load(out / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        torch.set_rng_state(state["torch_rng"])
    else:
        (out / "config.yaml").write_text(to_yaml(cfg))
    val_loader = DataLoader(val_set, batch_size=256)
    imagined_loader = DataLoader(imagined_val, batch_size=256) if imagined_val is not None else None
    log_file, log = open_run_log(out / "log.csv", ["step", "loss", "val_loss", "val_accuracy", "val_continuous_mae",
                                                   "val_aug_accuracy", "val_imagined_accuracy",
                                                   "val_imagined_continuous_mae", "seconds"], cfg.resume, step)
    real_batch = cfg.batch_size - imagined_batch
    steps_per_epoch = max(1, len(train_set) // real_batch)
    rng = torch.Generator()
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train-idm {cfg.task}", disable=not cfg.progress)
    started, running, summary = time.time(), [], {}
    while step < cfg.max_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        loader = DataLoader(train_set, batch_size=real_batch, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(cfg.seed + epoch))
        for i, batch in enumerate(loader):
            if i < offset:
                continue
            rng.manual_seed(cfg.seed * 1_000_003 + step)
            if imagined_batch:
                batch = _with_imagined_pairs(batch, imagined_train, imagined_batch, rng)
            if not continuous_dim and cfg.static_prob:
                batch = _with_static_pairs(batch, cfg.static_prob, rng)
            pair = augment(model.to_input(batch["frame"], batch["next_frame"]), cfg.augment_prob, rng)
            loss, _ = _loss(model, pair, *_targets(model, batch))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}; rerun with --resume and a lower --lr")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            running.append(loss.item())
            bar.update(1)
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                clean = evaluate(model, val_loader)
                noisy = evaluate(model, val_loader, augment_prob=1.0, seed=cfg.seed)
                imagined = evaluate(model, imagined_loader) if imagined_loader is not None else {}
                summary = {"step": step, "val_loss": clean["loss"], "val_accuracy": clean.get("accuracy"),
                           "val_continuous_mae": clean.get("continuous_mae"), "val_aug_accuracy": noisy.get("accuracy"),
                           **({"val_imagined_accuracy": imagined.get("accuracy"),
                               "val_imagined_continuous_mae": imagined.get("continuous_mae")} if imagined else {})}
                log.writerow([step, float(np.mean(running)), clean["loss"], clean.get("accuracy", ""),
                              clean.get("continuous_mae", ""), noisy.get("accuracy", ""), imagined.get("accuracy", ""),
                              imagined.get("continuous_mae", ""), round(time.time() - started, 1)])
                log_file.flush()
                running = []
                model.save_pretrained(out)
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                            "torch_rng": torch.get_rng_state()}, out / "state.pt")
                bar.set_postfix(val_acc=f"{clean.get('accuracy', float('nan')):.3f}")
            if step >= cfg.max_steps:
                break
    bar.close()
    log_file.close()
    print(json.dumps({**summary, "out": str(out), "seconds": round(time.time() - started, 1)}))
    return 0
