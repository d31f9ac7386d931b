"""Which translation does the motion head pick, against the player's true move?

For held-out chunks (the bench's draw), the true chunk is noised to t and the UNet's
text pass (true context + text) gives each frame's translation logits; the top one is
compared with the view's true scroll (the player's move since the last context frame).
Prints one JSON line per t: share of frames whose top translation is the true one, over
all frames and over frames where the player has moved, and the mean weight on the true one.
The chunks are drawn as `scripts/bench_worldmodel.py` draws them, so they are its chunks.
Run: python motion_probe.py CHECKPOINT 10000 8 4 999,600,300,100
"""
import json
import sys

import numpy as np
import torch

import envs
from envs.collect import rollout_expert
from worldmodel.model import VideoWorldModel

checkpoint, seed, episodes, per_episode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = VideoWorldModel.from_pretrained(checkpoint)
cfg, r = model.config, model.config.motion_radius
env = envs.make("retrace")
expert = envs.expert_for(env)
rng = np.random.default_rng(seed)
windows = []
for s in range(seed, seed + episodes):
    record = rollout_expert(env, expert, s)
    frames, index = record["frames"], record["subgoal_index"]
    starts = np.arange(0, len(index) - cfg.chunk_frames + 1, cfg.chunk_frames)
    for start in rng.choice(starts, size=min(per_episode, len(starts)), replace=False):
        position = record["observations"]["pos"]
        moves = position[start + 1:start + 1 + cfg.chunk_frames] - position[start]
        windows.append((frames[max(0, start + 1 - cfg.context_frames):start + 1],
                        frames[start + 1:start + 1 + cfg.chunk_frames],
                        record["subgoals"][int(index[start])]["text"], moves))
side = 2 * r + 1
for t in [int(x) for x in (sys.argv[5] if len(sys.argv) > 5 else '999,600,300,100').split(',')]:
    hits, moved_hits, moved, weight, mirrored, still = 0, 0, 0, [], 0, []
    for context_frames, truth, text, moves in windows:
        context, length = model.context_slots(model.latent.encode(context_frames[None]))
        clean = model.latent.encode(truth[None])
        noisy = model.train_scheduler.add_noise(clean, torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)),
                                                torch.tensor([t]))
        with torch.no_grad():
            out = model.predict(context, length, noisy, torch.tensor([t]), model.embed([text]))
        probs = out[:, cfg.latent_channels:].mean(dim=(-2, -1)).softmax(dim=1)[0]  # (K, F)
        for f, (dx, dy) in enumerate(np.asarray(moves)):
            true = (r + int(dy)) * side + (r + int(dx))
            top = int(probs[:, f].argmax())
            hits += top == true
            weight.append(float(probs[true, f]))
            still.append(float(probs[side * side // 2, f]))
            if dx or dy:
                moved += 1
                moved_hits += top == true
                mirrored += top == (r - int(dy)) * side + (r - int(dx))
    n = len(windows) * cfg.chunk_frames
    print(json.dumps({"t": t, "frames": n, "top_is_true": round(hits / n, 3), "moved_frames": moved,
                      "moved_top_is_true": round(moved_hits / max(moved, 1), 3),
                      "moved_top_is_mirrored": round(mirrored / max(moved, 1), 3),
                      "weight_on_true": round(float(np.mean(weight)), 3),
                      "weight_on_still": round(float(np.mean(still)), 3)}))
