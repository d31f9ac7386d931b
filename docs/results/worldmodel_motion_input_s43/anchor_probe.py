"""How near the true frames is the motion-compensated anchor, by block size and noise level?

For held-out chunks (the bench's draw), the true chunk is noised to t and
`VideoWorldModel.anchor` gives each frame's anchor; printed is its latent RMSE to the true
frames, against the unmoved last frame's. No weights are read: the anchor depends on the latent
space, the noise schedule, the radius and the block only, so CHECKPOINT is any tile-aligned model,
RADIUS replaces its radius and each BLOCK replaces `worldmodel.model.MOTION_BLOCK` (a block of
2 x 10 - 1 cells covers the whole 10 x 10 frame from every cell: one translation per frame).
Prints one JSON line per t. Run:
python anchor_probe.py CHECKPOINT RADIUS 10000 8 4 999,900,800,600,300,100 1,3,5,19
"""
import json
import sys
from dataclasses import replace

import numpy as np
import torch

import envs
import worldmodel.model
from envs.collect import rollout_expert
from worldmodel.model import VideoWorldModel

checkpoint, radius = sys.argv[1], int(sys.argv[2])
seed, episodes, per_episode = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
loaded = VideoWorldModel.from_pretrained(checkpoint)
model = VideoWorldModel(replace(loaded.config, motion_radius=radius), text_encoder=loaded.text_encoder)
cfg = model.config
env = envs.make("retrace")
expert = envs.expert_for(env)
rng = np.random.default_rng(seed)
windows = []
for s in range(seed, seed + episodes):
    record = rollout_expert(env, expert, s)
    frames, index = record["frames"], record["subgoal_index"]
    starts = np.arange(0, len(index) - cfg.chunk_frames + 1, cfg.chunk_frames)
    for start in rng.choice(starts, size=min(per_episode, len(starts)), replace=False):
        windows.append((model.latent.encode(frames[start:start + 1][None]),
                        model.latent.encode(frames[start + 1:start + 1 + cfg.chunk_frames][None])))
unmoved = float(np.sqrt(np.mean([float((last - clean).square().mean()) for last, clean in windows])))
for t in [int(x) for x in sys.argv[6].split(",")]:
    row = {"t": t, "chunks": len(windows), "unmoved_rmse": round(unmoved, 4)}
    for block in [int(x) for x in sys.argv[7].split(",")]:
        worldmodel.model.MOTION_BLOCK = block
        errors = []
        for last, clean in windows:
            noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
            noisy = model.train_scheduler.add_noise(clean, noise, torch.tensor([t]))
            errors.append(float((model.anchor(last, noisy, torch.tensor([t])) - clean).square().mean()))
        row[f"block_{block}_rmse"] = round(float(np.sqrt(np.mean(errors))), 4)
    print(json.dumps(row), flush=True)
