"""Session 27: per-chunk PSNR of one-chunk samples with static cells snapped at several tolerances.

The same chunks, texts and noise as scripts/bench_worldmodel.py (same seed stream); each chunk is sampled
once at tolerance 0 and snapped afterwards on its decoded pixels, so every tolerance scores the same samples.

Usage: python docs/results/worldmodel_static_s27/static_cells.py TASK CHECKPOINT|- SEED EPISODES CHUNKS_PER_EPISODE
"""

import sys

import numpy as np
import torch

import envs
from envs.collect import rollout_expert
from worldmodel.generate import default_checkpoint
from worldmodel.model import VideoWorldModel
from worldmodel.video_io import psnr

TOLERANCES = (0, 4, 8, 12, 16, 24, 32)


def snapped(generated: np.ndarray, last: np.ndarray, tolerance: float, cell: int) -> np.ndarray:
    """Cells of ``generated`` (F, H, W, 3) whose pixels all lie within ``tolerance`` of ``last`` take ``last``'s."""
    frames, size = generated.shape[0], -(-generated.shape[1] // cell) * cell
    change = np.zeros((frames, size, size))
    change[:, :generated.shape[1], :generated.shape[2]] = np.abs(generated.astype(float) - last).max(axis=3)
    cells = change.reshape(frames, size // cell, cell, size // cell, cell).max(axis=(2, 4))
    still = np.repeat(np.repeat(cells, cell, 1), cell, 2)[:, :generated.shape[1], :generated.shape[2]] <= tolerance
    return np.where(still[..., None], last[None], generated)


def main() -> None:
    task, checkpoint, seed, episodes, per_episode = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    model = VideoWorldModel.from_pretrained(default_checkpoint(task, "worldmodel") if checkpoint == "-" else checkpoint)
    cfg = model.config
    env = envs.make(task)
    expert = envs.expert_for(env)
    rng = np.random.default_rng(seed)
    scores = {t: [] for t in TOLERANCES}
    repeat = []
    for episode in range(seed, seed + episodes):
        record = rollout_expert(env, expert, episode)
        frames, subgoal_index = record["frames"], record["subgoal_index"]
        starts = np.arange(0, len(subgoal_index) - cfg.chunk_frames + 1, cfg.chunk_frames)
        for start in rng.choice(starts, size=min(per_episode, len(starts)), replace=False):
            context = frames[max(0, start + 1 - cfg.context_frames):start + 1]
            truth = frames[start + 1:start + 1 + cfg.chunk_frames]
            text = record["subgoals"][int(subgoal_index[start])]["text"]
            chunk = model.generate_chunk(model.latent.encode(context[None]), [text], static_tolerance=0.0,
                                         generator=torch.Generator().manual_seed(int(start)))
            generated = model.latent.decode(chunk)[0]
            repeat.append(psnr(np.repeat(context[-1:], len(truth), axis=0), truth))
            for tolerance in TOLERANCES:
                scores[tolerance].append(psnr(snapped(generated, context[-1], tolerance, cfg.latent_factor), truth))
    env.close()
    print(f"repeat-last: {np.mean(repeat):.2f} dB per chunk ({len(repeat)} chunks)")
    for tolerance, values in scores.items():
        print(f"tolerance {tolerance}: {np.mean(values):.2f} dB per chunk")


if __name__ == "__main__":
    main()
