"""Can a UNet width learn the high-noise regime? A from-scratch training probe.

Sampling starts at t = 999, where the noise prediction must nearly copy its input
(the signal left in x_t is ~1 %); a model that gets this wrong turns every sample
into noise. This trains a fresh world model of the given widths for a few steps with
t drawn from [min_t, 1000) only, on the first episodes of a dataset, and prints the
loss curve; the last line is one JSON object.

Usage: python scripts/bench_capacity.py --data data/retrace --widths 96,96 [--steps 150] [--min-t 700]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from envs.dataset import ChunkDataset, load_dataset
from worldmodel.model import VideoWorldModel, WorldModelConfig
from worldmodel.train import latent_scale_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/retrace")
    parser.add_argument("--widths", default="48,96", help="UNet block_out_channels")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--min-t", type=int, default=700)
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load_dataset(args.data)
    chunks = ChunkDataset(args.data, 4, list(range(min(args.episodes, len(data)))))
    widths = tuple(int(w) for w in args.widths.split(","))
    model = VideoWorldModel(WorldModelConfig(block_out_channels=widths, task=data.info["task"],
                                             latent_scale=latent_scale_of(chunks)))
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=2e-4, weight_decay=0.0)
    loader = DataLoader(chunks, batch_size=8, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))
    noise_rng = torch.Generator().manual_seed(args.seed + 1)
    curve, losses, step, started = {}, [], 0, time.time()
    model.unet.train()
    while step < args.steps:
        for batch in loader:
            context, target = model.latent.encode(batch["context"]), model.latent.encode(batch["target"])
            noise = torch.randn(target.shape, generator=noise_rng)
            t = torch.randint(args.min_t, 1000, (target.shape[0],), generator=noise_rng)
            noisy = model.train_scheduler.add_noise(target, noise, t)
            predicted = model.predict_noise(context, batch["context_len"].long(), noisy, t,
                                            model.text_encoder(list(batch["text"])))
            loss = F.mse_loss(predicted, noise)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.unet.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step % 10 == 0:
                curve[step] = round(float(np.mean(losses[-10:])), 4)
                print(step, curve[step], round(time.time() - started, 1), flush=True)
            if step >= args.steps:
                break
    print(json.dumps({"widths": list(widths), "params_m": round(sum(p.numel() for p in model.unet.parameters()) / 1e6, 2),
                      "min_t": args.min_t, "steps": step, "final_loss": curve.get(step),
                      "seconds_per_step": round((time.time() - started) / step, 2), "curve": curve}))


if __name__ == "__main__":
    main()
