"""Simulator speed: env steps/s (physics + render) and render-only frames/s per size.

Prints one JSON line. Usage: python scripts/bench_env.py [--steps N]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import envs


def bench(task: str, backend: str, size: int, steps: int, seed: int) -> dict:
    env = envs.make(task, backend, image_size=size)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    actions = [env.action_space.sample() for _ in range(steps)]
    env.action_space.seed(seed)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset(seed=int(rng.integers(1 << 30)))
    step_rate = steps / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(steps):
        env.render_frame()
    frame_rate = steps / (time.perf_counter() - start)
    env.close()
    return {"steps_per_s": round(step_rate, 1), "frames_per_s": round(frame_rate, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = {}
    for task, backend in [("return_cubes", "embedded"), ("retrace", "embedded"), ("retrace", "miniworld")]:
        for size in (64, 128):
            result[f"{task}/{backend}/{size}"] = bench(task, backend, size, args.steps, args.seed)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
