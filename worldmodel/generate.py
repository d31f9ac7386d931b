"""``slowfast generate``: a long action-driven video from a simulator's first frame."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

import envs
from jobconfig import CpuThreads
from worldmodel.model import SamplingOverrides, VideoWorldModel
from worldmodel.video_io import write_video

DEFAULT_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def default_checkpoint(task: str, part: str) -> Path:
    return DEFAULT_CHECKPOINTS / task / part


@dataclass
class GenerateConfig(SamplingOverrides, CpuThreads):
    task: str = field(default="retrace", metadata={"help": "task whose simulator gives the first frame"})
    seed: int = field(default=0, metadata={"help": "episode seed (first frame) and sampling seed"})
    actions: str = field(default="", metadata={"help": "comma-separated texts, one chunk each"})
    actions_file: str | None = field(default=None, metadata={"help": "file with one text per line"})
    checkpoint: str | None = field(default=None, metadata={"help": "world model folder",
                                                           "default_text": "checkpoints/TASK/worldmodel"})
    out: str = field(default="runs/generate", metadata={"help": "output folder"})
    fps: int = field(default=10, metadata={"help": "video frame rate"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def texts(self) -> list[str]:
        if self.actions_file:
            try:
                lines = Path(self.actions_file).read_text().splitlines()
            except OSError as error:
                raise ValueError(f"cannot read --actions-file: {error}") from None
            texts = [line.strip() for line in lines if line.strip()]
        else:
            texts = [t.strip() for t in self.actions.split(",") if t.strip()]
        if not texts:
            raise ValueError("give the chunks' texts with --actions \"go left,go up\" or --actions-file FILE")
        return texts


def run_generate(cfg: GenerateConfig) -> int:
    cfg.apply_threads()
    texts = cfg.texts()
    path = cfg.checkpoint or default_checkpoint(cfg.task, "worldmodel")
    model = cfg.apply_sampling(VideoWorldModel.from_pretrained(path))
    env = envs.make(cfg.task)
    first, _ = env.reset(seed=cfg.seed)
    env.close()
    started = time.time()
    bar = (lambda xs: tqdm(xs, desc="generate", unit="chunk")) if cfg.progress else None
    frames = model.rollout(first["rgb"], texts, seed=cfg.seed, progress=bar)
    seconds = time.time() - started
    out = Path(cfg.out)
    write_video(out / "video.mp4", frames, cfg.fps)
    write_video(out / "video.gif", frames, cfg.fps, scale=2)
    summary = {"task": cfg.task, "seed": cfg.seed, "chunks": len(texts), "frames": len(frames),
               "seconds": round(seconds, 1), "seconds_per_chunk": round(seconds / len(texts), 2),
               "video": str(out / "video.mp4")}
    (out / "generate.json").write_text(json.dumps({**summary, "texts": texts,
                                                   "sampling": SamplingOverrides.settings_of(model)}, indent=2))
    print(json.dumps(summary))
    return 0
