"""Filmstrips of expert episodes for the README: docs/<task>.png.

Usage: python scripts/make_figures.py [--task return_cubes] [--seed 0] [--size 128]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import numpy as np

import envs
from envs.collect import rollout_expert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="return_cubes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--panels", type=int, default=8)
    args = parser.parse_args()
    env = envs.make(args.task, image_size=args.size)
    record = rollout_expert(env, envs.expert_for(env), args.seed)
    env.close()
    frames = record["frames"]
    picks = np.linspace(0, len(frames) - 1, args.panels).round().astype(int)
    gap = np.full((args.size, 2, 3), 255, dtype=np.uint8)
    strip = np.concatenate([x for i in picks for x in (frames[i], gap)][:-1], axis=1)
    out = Path("docs") / f"{args.task}.png"
    out.parent.mkdir(exist_ok=True)
    iio.imwrite(out, strip)
    print(out, [s["text"] for s in record["subgoals"]])


if __name__ == "__main__":
    main()
