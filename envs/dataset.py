"""Episode datasets on disk, in the spirit of LeRobot's format.

    DIR/meta/info.json          task, backend, fps, image size, spaces, counts
    DIR/meta/episodes.jsonl     one line an episode: seed, length, goal, subgoals, metric
    DIR/data/episode_NNNNNN.npz frames (T+1, H, W, 3) uint8, actions (T, A),
                                subgoal_index (T,), obs_<key> (T+1, ...) for each state key
    DIR/summary.json            task, backend and each episode's seed, frames, distance

Frames are stored losslessly (compressed npz): at 64x64 a video codec's chroma
subsampling visibly smears the cubes' colours. ``frames[t + 1]`` is the frame after
``actions[t]``, which was taken for subgoal ``subgoal_index[t]``.

``load_dataset(DIR)`` opens it; ``ChunkDataset`` serves world-model samples
(context frames, subgoal text, target frames, actions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

FORMAT_VERSION = "slowfast-episodes/1"


class DatasetError(ValueError):
    pass


def episode_path(root: Path, index: int) -> Path:
    return root / "data" / f"episode_{index:06d}.npz"


def write_episode(root: Path, index: int, frames: np.ndarray, actions: np.ndarray,
                  subgoal_index: np.ndarray, observations: dict[str, np.ndarray]) -> None:
    path = episode_path(root, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"frames": frames, "actions": actions, "subgoal_index": subgoal_index}
    arrays.update({f"obs_{k}": v for k, v in observations.items()})
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


@dataclass
class EpisodeDataset:
    root: Path
    info: dict
    episodes: list[dict]

    def __len__(self) -> int:
        return len(self.episodes)

    def load_episode(self, index: int) -> dict[str, np.ndarray]:
        return _read_npz(str(episode_path(self.root, index)))


@lru_cache(maxsize=64)
def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as error:
        raise DatasetError(f"cannot read episode file {path}: {error}; re-run `slowfast collect`") from None


def load_dataset(root: str | Path) -> EpisodeDataset:
    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise DatasetError(f"{root} is not a slowfast dataset (no meta/info.json); "
                           "make one with `slowfast collect --task TASK --out DIR`")
    info = json.loads(info_path.read_text())
    if info.get("format") != FORMAT_VERSION:
        raise DatasetError(f"{root}: dataset format {info.get('format')!r}, expected {FORMAT_VERSION!r}")
    lines = (root / "meta" / "episodes.jsonl").read_text().splitlines()
    episodes = [json.loads(line) for line in lines if line.strip()]
    return EpisodeDataset(root=root, info=info, episodes=episodes)


class ChunkDataset(Dataset):
    """World-model samples: ``context_frames`` frames up to a chunk start, then the chunk.

    Chunks start every ``chunk_frames`` actions, which is where subgoals start too, so a
    chunk has one subgoal text. Early chunks have fewer real context frames than the
    window; the earliest frame is repeated to fill it and ``context_len`` says how many
    are real (f_p = 1 for an episode's first chunk, as in the paper).
    """

    def __init__(self, root: str | Path, context_frames: int = 4, episodes: list[int] | None = None):
        self.data = load_dataset(root)
        self.chunk_frames = int(self.data.info["chunk_frames"])
        self.context_frames = context_frames
        wanted = range(len(self.data)) if episodes is None else episodes
        self.index: list[tuple[int, int]] = []
        for e in wanted:
            length = self.data.episodes[e]["length"]
            self.index += [(e, s) for s in range(0, length - self.chunk_frames + 1, self.chunk_frames)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        e, start = self.index[i]
        episode = self.data.load_episode(e)
        frames = episode["frames"]
        first = max(0, start + 1 - self.context_frames)
        context = frames[first:start + 1]
        context_len = len(context)
        if context_len < self.context_frames:
            pad = np.repeat(context[:1], self.context_frames - context_len, axis=0)
            context = np.concatenate([pad, context])
        stop = start + self.chunk_frames
        subgoal = self.data.episodes[e]["subgoals"][int(episode["subgoal_index"][start])]
        return {
            "context": torch.from_numpy(context.copy()),
            "context_len": context_len,
            "target": torch.from_numpy(frames[start + 1:stop + 1].copy()),
            "actions": torch.from_numpy(episode["actions"][start:stop].astype(np.float32)),
            "text": subgoal["text"],
            "kind": subgoal["kind"],
            "episode": e,
            "start": start,
        }


class FramePairDataset(Dataset):
    """Inverse-dynamics samples: (frame t, frame t + 1, action t) from every step, plus the
    end effector's position at t + 1 where the task records one (a position-predicting IDM's label)."""

    def __init__(self, root: str | Path, episodes: list[int] | None = None):
        self.data = load_dataset(root)
        wanted = range(len(self.data)) if episodes is None else episodes
        self.index = [(e, t) for e in wanted for t in range(self.data.episodes[e]["length"])]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        e, t = self.index[i]
        episode = self.data.load_episode(e)
        sample = {"frame": torch.from_numpy(episode["frames"][t]),
                  "next_frame": torch.from_numpy(episode["frames"][t + 1]),
                  "action": torch.from_numpy(np.asarray(episode["actions"][t], dtype=np.float32).reshape(-1))}
        if "obs_ee_pos" in episode:
            sample["next_ee_pos"] = torch.from_numpy(np.asarray(episode["obs_ee_pos"][t + 1], dtype=np.float32))
        return sample
