"""``slowfast imagine``: a dataset of the world model's own chunks, labelled with the true actions.

The inverse-dynamics model learns on rendered frames, but in planning it reads imagined ones,
which are blurrier, fade the old view out where the simulator scrolls it, and put the
motion's first frames a little off. Measured on the shipped retrace model (docs/results/README.md):
the IDM reads the true move off 64 % of the moving transitions of chunks imagined for a leg's
own text, and off 100 % of the rendered ones. This job gives it examples of what the model
imagines: for each chunk of a collected dataset, the model imagines that chunk from the true
context frames and the true subgoal text, as planning would, and the imagined frames are
stored with the actions the expert took there (and its recorded state, e.g. the end
effector's position, a position-predicting IDM's label).

Chunks of the task's return phase are left out by default: their text does not say where to
go, so without memory the model's chunk need not show the expert's move and the label would
often be wrong.

The output is an ordinary dataset (``envs.dataset``), one episode per imagined chunk:
frames = [the last real frame before the chunk, the imagined frames], so its first frame pair
is the one planning reads too (last real frame -> first imagined frame). Index lines name
the source episode and chunk start; ``meta/info.json`` names the source and the world model.
``slowfast train-idm --imagined-data DIR`` mixes its pairs into training.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

import tasks
from envs.dataset import load_dataset, write_episode
from jobconfig import CpuThreads, to_yaml
from worldmodel.generate import default_checkpoint
from worldmodel.model import VideoWorldModel


# What decides the dataset's content; --threads and --progress may differ when an unfinished run is continued.
CONTENT_OPTIONS = ("task", "data", "checkpoint", "episodes", "return_chunks", "seed")


@dataclass
class ImagineConfig(CpuThreads):
    task: str = field(default="retrace", metadata={"help": "task the dataset and the world model are for"})
    data: str = field(default="data/retrace", metadata={"help": "collected dataset whose chunks are imagined"})
    checkpoint: str | None = field(default=None, metadata={"help": "world model folder",
                                                           "default_text": "checkpoints/TASK/worldmodel"})
    out: str = field(default="data/retrace_imagined", metadata={"help": "dataset folder to write"})
    episodes: int = field(default=0, metadata={"help": "imagine the first N source episodes (0 = all)"})
    return_chunks: bool = field(default=False, metadata={
        "help": "also imagine the return phase's chunks, whose text does not name the move"})
    seed: int = field(default=0, metadata={"help": "sampler noise: chunk k of source episode e uses seed "
                                                   "SEED * 1000003 + e * 1000 + k"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        super().__post_init__()
        tasks.get(self.task)
        if self.episodes < 0:
            raise ValueError(f"--episodes must be >= 0, got {self.episodes}")


def imagined_chunks(source, chunk: int, episodes: list[int], return_kinds: tuple[str, ...],
                    return_chunks: bool) -> list[tuple[int, int, int, dict]]:
    """(source episode, chunk number, start, subgoal) for every chunk to imagine, in order."""
    out = []
    for e in episodes:
        subgoal_index = source.load_episode(e)["subgoal_index"]
        for k, start in enumerate(range(0, source.episodes[e]["length"] - chunk + 1, chunk)):
            subgoal = source.episodes[e]["subgoals"][int(subgoal_index[start])]
            if return_chunks or subgoal["kind"] not in return_kinds:
                out.append((e, k, start, subgoal))
    return out


def _partial_run(out: Path, cfg: ImagineConfig) -> list[dict]:
    """The index lines an interrupted run with this config already wrote (it continues after them),
    or none for a new run. The dataset is complete, and loadable, once meta/info.json is written."""
    content = {name: getattr(cfg, name) for name in CONTENT_OPTIONS}
    (out / "meta").mkdir(parents=True, exist_ok=True)
    if (out / "config.yaml").exists():
        before = yaml.safe_load((out / "config.yaml").read_text()) or {}
        if {name: before.get(name) for name in CONTENT_OPTIONS} != content:
            raise ValueError(f"{out} holds an unfinished `slowfast imagine` run with other options; rerun that "
                             "command to finish it, or choose another --out")
    (out / "config.yaml").write_text(to_yaml(cfg))
    index = out / "meta" / "episodes.jsonl"
    lines = []
    for text in (index.read_text().splitlines() if index.exists() else []):
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:  # the line being written when the run stopped
            break
    index.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def run_imagine(cfg: ImagineConfig) -> int:
    cfg.apply_threads()
    out = Path(cfg.out)
    if (out / "meta" / "info.json").exists():
        raise ValueError(f"{out} already holds a dataset; choose another --out or delete it")
    source = load_dataset(cfg.data)
    if source.info["task"] != cfg.task:
        raise ValueError(f"--data {cfg.data} holds task {source.info['task']!r}, not --task {cfg.task!r}")
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else default_checkpoint(cfg.task, "worldmodel")
    model = VideoWorldModel.from_pretrained(checkpoint)
    if model.config.chunk_frames != int(source.info["chunk_frames"]):
        raise ValueError(f"the world model imagines {model.config.chunk_frames}-frame chunks, the dataset has "
                         f"{source.info['chunk_frames']}-frame chunks; collect data for this model")
    episodes = list(range(min(cfg.episodes, len(source)) if cfg.episodes else len(source)))
    chunk, fc = model.config.chunk_frames, model.config.context_frames
    todo = imagined_chunks(source, chunk, episodes, tasks.get(cfg.task).RETURN_KINDS, cfg.return_chunks)
    lines = _partial_run(out, cfg)
    index_file = (out / "meta" / "episodes.jsonl").open("a")
    seconds = []
    for e, k, start, subgoal in tqdm(todo[len(lines):], desc=f"imagine {cfg.task}", unit="chunk",
                                     disable=not cfg.progress):
        episode = source.load_episode(e)
        context = episode["frames"][max(0, start + 1 - fc):start + 1]
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + e * 1000 + k)
        began = time.perf_counter()
        latents = model.generate_chunk(model.latent.encode(context[None]), [subgoal["text"]], generator=generator)
        seconds.append(time.perf_counter() - began)
        frames = np.concatenate([context[-1:], model.latent.decode(latents)[0]])
        window = slice(start, start + chunk + 1)
        observations = {key[4:]: episode[key][window] for key in episode if key.startswith("obs_")}
        write_episode(out, len(lines), frames, episode["actions"][start:start + chunk],
                      np.zeros(chunk, np.int16), observations)
        lines.append({"episode_index": len(lines), "seed": source.episodes[e]["seed"], "length": chunk,
                      "goal": subgoal["text"], "subgoals": [subgoal], "source_episode": e, "source_start": start})
        index_file.write(json.dumps(lines[-1]) + "\n")
        index_file.flush()
    index_file.close()
    info = {**source.info, "total_episodes": len(lines), "total_frames": len(lines) * (chunk + 1),
            "imagined_by": str(checkpoint), "imagined_from": str(cfg.data), "return_chunks": cfg.return_chunks,
            "branches": False}
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    summary = {"task": cfg.task, "chunks": len(lines), "source_episodes": len(episodes), "out": str(out),
               "seconds_per_chunk": round(float(np.median(seconds)), 3) if seconds else None}
    print(json.dumps(summary))
    return 0
