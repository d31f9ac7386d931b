"""Throwaway: does the x0 estimate at each sampling step follow the text (branch setting of bench_text)?"""
import json, sys
import numpy as np, torch
import envs
from envs.collect import branch_rollouts, rollout_expert
from worldmodel.model import SnapOverrides, VideoWorldModel
sys.path.insert(0, "scripts")
from bench_text import first_divergent_chunk

g_t = float(sys.argv[1]); snap = int(sys.argv[2]); decide = int(sys.argv[3])
model = SnapOverrides(snap_start=snap, snap_decide=decide).apply(
    VideoWorldModel.from_pretrained("checkpoints/retrace/worldmodel_motion_wip"))
cfg = model.config
env = envs.make("retrace")
expert = envs.expert_for(env)
hits = {}
final = []
original = model.guided_output
for seed in range(20000, 20006):
    records = [rollout_expert(env, expert, seed)] + branch_rollouts(env, seed)
    start = first_divergent_chunk(records, cfg.chunk_frames)
    truths = np.stack([r["frames"][start + 1:start + 1 + cfg.chunk_frames] for r in records]).astype(np.float32)
    context = model.latent.encode(records[0]["frames"][None, max(0, start - 3):start + 1])
    for i, record in enumerate(records):
        seen = []
        def recording(unet, c, l, txt, w, r, latents, t, anchor):
            out = original(unet, c, l, txt, w, r, latents, t, anchor)
            seen.append((int(t), out.clone()))
            return out
        model.guided_output = recording
        latents = model.generate_chunk(context, [record["subgoals"][0]["text"]],
                                       generator=torch.Generator().manual_seed(seed), text_guidance=g_t)
        for t, est in seen + [(-1, latents)]:
            img = model.latent.decode(est)[0].astype(np.float32)
            err = ((truths - img[None]) ** 2).mean(axis=(1, 2, 3, 4))
            hits.setdefault(t, []).append(float(np.argmin(err) == i))
print(json.dumps({"g_t": g_t, "snap": snap, "decide": decide,
                  "following_by_t": {t: round(float(np.mean(v)), 3) for t, v in sorted(hits.items(), reverse=True)}}))
